"""Write the storyteller recipe's data set: choose-your-own-adventure turns in the storymaker's turn
shape (a short second-person scene, then "Choices:" and three numbered actions), over six genres
and six tones, as openings and as continuations after a chosen action. Every conversation carries
the storymaker's own system prompt and opening request, so the model learns exactly what the app
sends and what it must answer.

    python training/data/make_story.py   # rewrites training/data/story_sharegpt.jsonl
"""

import json
import random
from pathlib import Path

from chat_runtime.story import ACTION_VERBS, GENRES, TONES, Story, format_turn

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PROMPT = (ROOT / "storymaker_app" / "system_prompt.md").read_text(encoding="utf-8").strip()

# Per genre: title nouns, places, openings' hooks, what a choice leads to, and actions to offer.
WORLDS = {
    "fantasy": dict(
        titles=["Crown of Ash", "Last Dragon Egg", "Silver Forest", "Wizard's Apprentice", "Frozen Throne"],
        places=[
            "the edge of an ancient forest",
            "a ruined castle on a hill",
            "a village at the foot of a volcano",
            "a stone bridge over a misty river",
            "the great hall of a mountain king",
        ],
        hooks=[
            "A cloaked stranger presses a glowing stone into your hand",
            "Somewhere above you, a dragon roars",
            "An old map in your pocket begins to warm",
            "A raven lands beside you with a silver key in its beak",
        ],
        results=[
            "a hidden door swings open in the rock",
            "a circle of standing stones hums with light",
            "an old knight blocks the path and asks your name",
            "the trees part to show a sleeping dragon",
        ],
        actions=[
            "Follow the raven into the trees",
            "Open the door with the silver key",
            "Ask the stranger about the stone",
            "Climb the crumbling tower",
            "Cross the misty bridge",
            "Light a torch and enter the cave",
            "Hide behind the standing stones",
            "Offer the knight your bread",
            "Read the runes on the gate",
        ],
    ),
    "mystery": dict(
        titles=[
            "Lighthouse Keeper's Secret",
            "Missing Violin",
            "Clock That Stopped",
            "Locked Library",
            "Fog on Elm Street",
        ],
        places=[
            "a lighthouse on a windy cape",
            "the dusty attic of an old hotel",
            "a train stopped in the snow",
            "a library after closing time",
            "a quiet fishing harbour at dawn",
        ],
        hooks=[
            "A letter with no name on it waits on the table",
            "Someone has left muddy footprints that stop at a wall",
            "The clock on the wall has stopped at midnight",
            "A lamp flickers in a window that should be empty",
        ],
        results=[
            "a torn photograph falls from between the pages",
            "the footprints lead to a trapdoor under the rug",
            "the keeper admits he heard a bell in the night",
            "a second key is taped under the drawer",
        ],
        actions=[
            "Examine the muddy footprints",
            "Read the letter by the lamp",
            "Ask the keeper about the bell",
            "Search the drawer of the desk",
            "Follow the footprints outside",
            "Knock on the locked door",
            "Check the clock for a hidden note",
            "Visit the harbour master",
            "Listen at the attic door",
        ],
    ),
    "science fiction": dict(
        titles=["Signal from Europa", "Last Ship Home", "Robot Who Dreamed", "Orbit of Glass", "Station Nine"],
        places=[
            "the bridge of a cargo ship near Saturn",
            "a research base under the ice of Europa",
            "a quiet space station at the edge of the system",
            "a city of glass towers on Mars",
            "the engine room of a drifting starship",
        ],
        hooks=[
            "A strange signal repeats on every channel",
            "The ship's computer says your name in a stranger's voice",
            "A red warning light blinks over the airlock",
            "A small robot rolls up and asks you to follow it",
        ],
        results=[
            "the signal turns into a map of the stars",
            "the airlock opens onto a room no one has seen",
            "the robot shows you a message hidden in its memory",
            "the engines hum back to life for a moment",
        ],
        actions=[
            "Scan the signal for a pattern",
            "Follow the little robot",
            "Repair the broken antenna",
            "Open the sealed airlock",
            "Call the crew to the bridge",
            "Decode the message on the screen",
            "Steer the ship toward the light",
            "Check the oxygen levels",
            "Send a reply to the signal",
        ],
    ),
    "fairy tale": dict(
        titles=[
            "Dragon Who Sneezed Glitter",
            "Princess and the Pea Soup",
            "Giant's Garden",
            "Singing Well",
            "Paper Crown",
        ],
        places=[
            "a cottage made of gingerbread",
            "a garden where the flowers can talk",
            "a castle built on a cloud",
            "a village where it always snows on Sundays",
            "the bottom of a wishing well",
        ],
        hooks=[
            "A frog in a tiny crown asks for your help",
            "A dragon sneezes and the sky fills with glitter",
            "A talking cat says the queen has lost her shoe",
            "The moon comes down to ask you the way home",
        ],
        results=[
            "the flowers sing a song about a hidden treasure",
            "the giant turns out to be shy and kind",
            "a fairy grants you one small wish",
            "the frog shows you a door under the lily pads",
        ],
        actions=[
            "Help the frog find its crown",
            "Ask the talking cat for directions",
            "Sing to the sleepy giant",
            "Climb the beanstalk to the clouds",
            "Offer the dragon a handkerchief",
            "Follow the trail of glitter",
            "Knock on the gingerbread door",
            "Throw a coin into the wishing well",
            "Dance with the talking flowers",
        ],
    ),
    "pirate adventure": dict(
        titles=[
            "Treasure of Skull Reef",
            "Captain's Last Map",
            "Ship of Lanterns",
            "Mermaid's Bargain",
            "Storm Over Tortuga",
        ],
        places=[
            "the deck of a creaking pirate ship",
            "a sandy island with one palm tree",
            "a busy harbour full of ships",
            "a sea cave that glows green",
            "a tavern by the docks",
        ],
        hooks=[
            "The captain hands you half of a treasure map",
            "A rival ship with black sails appears on the horizon",
            "A parrot squawks a secret password",
            "A mermaid rises from the waves and calls your name",
        ],
        results=[
            "the map shows an X on the reef",
            "the rival captain offers you a deal",
            "a chest washes up on the sand",
            "the mermaid warns you of a storm",
        ],
        actions=[
            "Dig under the palm tree",
            "Steer the ship toward the reef",
            "Trade the map for a compass",
            "Swim to the glowing cave",
            "Signal the crew to raise the flag",
            "Board the rival ship",
            "Ask the parrot the password",
            "Follow the mermaid to the rocks",
            "Hide the treasure in the hold",
        ],
    ),
    "ghost story": dict(
        titles=[
            "Whispering Stairs",
            "House on Crow Hill",
            "Lantern in the Mist",
            "Empty Chapel",
            "Last Train at Midnight",
        ],
        places=[
            "an empty house at the end of the lane",
            "a chapel in a foggy graveyard",
            "a railway station at midnight",
            "a long hallway lit by candles",
            "an old school after the last bell",
        ],
        hooks=[
            "A cold breath touches the back of your neck",
            "Footsteps cross the floor above you",
            "A lantern swings in the mist with no one holding it",
            "A child's voice hums a song you once knew",
        ],
        results=[
            "a pale figure points toward the cellar",
            "the candles go out one by one",
            "a door slams and then opens again",
            "the humming stops and a name is written in the dust",
        ],
        actions=[
            "Follow the floating lantern",
            "Call out to the voice",
            "Light the candles again",
            "Climb the creaking stairs",
            "Read the name in the dust",
            "Leave the house quickly",
            "Open the cellar door",
            "Hold your breath and listen",
            "Speak to the pale figure",
        ],
    ),
}
TONE_LINES = {
    "hopeful": ["The air feels warm, as if good luck is near", "A small bird sings nearby, and you feel brave"],
    "eerie": ["Everything is too quiet", "Shadows seem to move when you are not looking"],
    "funny": ["A goose honks at you as if you owe it money", "Your left boot squeaks with every step"],
    "tense": ["Your heart pounds in your chest", "There is no time to waste"],
    "whimsical": ["The clouds are shaped like teacups", "Tiny lights dance around your feet"],
    "gloomy": ["Rain drips from every roof", "Grey clouds hang low over everything"],
}


def scene(*sentences: str) -> str:
    return " ".join(s.rstrip(".") + "." for s in sentences)


def opening(rng: random.Random, genre: str, tone: str) -> tuple[Story, str, list[str]]:
    world = WORLDS[genre]
    story = Story.new(f"The {rng.choice(world['titles'])}", genre, tone)
    text = scene(
        f"You stand at {rng.choice(world['places'])}", rng.choice(TONE_LINES[tone]), rng.choice(world["hooks"])
    )
    return story, text, rng.sample(world["actions"], 3)


def continuation(rng: random.Random, genre: str, tone: str, action: str) -> tuple[str, list[str]]:
    world = WORLDS[genre]
    did = action[0].lower() + action[1:]
    text = scene(f"You {did}, and {rng.choice(world['results'])}", rng.choice(TONE_LINES[tone]))
    return text, rng.sample([a for a in world["actions"] if a != action], 3)


def rows(rng: random.Random) -> list[dict]:
    out = []
    for genre in GENRES:
        for tone in TONES:
            for _ in range(4):
                story, text, choices = opening(rng, genre, tone)
                conversation = [
                    {"from": "system", "value": SYSTEM_PROMPT},
                    {"from": "human", "value": story.opening_request()},
                    {"from": "gpt", "value": format_turn(text, choices)},
                ]
                if rng.random() < 0.6:  # a continuation after one of the offered actions
                    action = rng.choice(choices)
                    text, choices = continuation(rng, genre, tone, action)
                    conversation += [
                        {"from": "human", "value": action},
                        {"from": "gpt", "value": format_turn(text, choices)},
                    ]
                out.append({"conversations": conversation})
    rng.shuffle(out)
    return out


def check(conversations: list[dict]) -> None:
    """Every offered action starts with one of the grammar's verbs (what decoding will allow)."""
    for row in conversations:
        for message in row["conversations"]:
            if message["from"] == "gpt":
                for line in message["value"].split("Choices:\n")[1].splitlines():
                    assert line.split(" ", 2)[1] in ACTION_VERBS, line


if __name__ == "__main__":
    target = Path(__file__).with_name("story_sharegpt.jsonl")
    conversations = rows(random.Random(3407))
    check(conversations)
    target.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations))
    print(f"wrote {len(conversations)} conversations to {target}")
