"""Write the CPU DPO recipe's preference set: short questions on several topics, each with a
chosen reply that opens with "In short:" and answers in one sentence, and a rejected reply that
gives the same answer wrapped in filler. A test can tell the styles apart: after DPO the model's
own replies open with "In short:" and get shorter.

    python training/data/make_preferences.py   # rewrites training/data/sample_preferences.jsonl
"""

import json
import random
from pathlib import Path

CHOSEN = "In short: "
OPENINGS = [
    "Well, that is a really interesting question, and I am glad you asked it.",
    "Great question! Let me think about this carefully before I answer.",
    "Hmm, there are many ways to look at this, so let me start from the beginning.",
    "Thank you for asking! This is something a lot of people wonder about.",
]
CLOSINGS = [
    "I hope this helps, and please let me know if you have any other questions at all!",
    "There is a lot more that could be said about this, but that is the main idea.",
    "Of course, you may want to double-check this with other sources as well.",
    "Feel free to ask me anything else, I am always happy to chat about it.",
]
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Chile": "Santiago",
    "Poland": "Warsaw",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Cuba": "Havana",
    "Nepal": "Kathmandu",
    "Ghana": "Accra",
    "Finland": "Helsinki",
}
COLORS = {
    "the sky on a clear day": "blue",
    "grass": "green",
    "snow": "white",
    "a ripe banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
    "milk": "white",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "up": "down",
    "light": "dark",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "strong": "weak",
}
SOUNDS = {
    "dog": "barks",
    "cat": "meows",
    "cow": "moos",
    "duck": "quacks",
    "lion": "roars",
    "sheep": "bleats",
    "horse": "neighs",
    "owl": "hoots",
}
SYSTEMS = ["You are a helpful assistant.", "You are Finch, a friendly assistant."]


def questions(rng: random.Random) -> list[tuple[str, str]]:
    """(question, one-sentence answer) on several topics."""
    out = []
    for country, city in CAPITALS.items():
        out += [
            (f"What is the capital of {country}?", f"the capital of {country} is {city}."),
            (f"Which city is the capital of {country}?", f"{city} is the capital of {country}."),
        ]
    for _ in range(90):
        x, y = rng.randint(2, 60), rng.randint(2, 60)
        out.append(
            (
                rng.choice([f"What is {x} + {y}?", f"Add {x} and {y}.", f"How much is {x} plus {y}?"]),
                f"{x} + {y} = {x + y}.",
            )
        )
    out += [(f"What color is {thing}?", f"{thing} is {color}.") for thing, color in COLORS.items()]
    out += [(f"What is the opposite of '{w}'?", f"the opposite of '{w}' is '{o}'.") for w, o in OPPOSITES.items()]
    out += [(f"What sound does a {a} make?", f"a {a} {s}.") for a, s in SOUNDS.items()]
    out += [(f"What does a {a} say?", f"a {a} {s}.") for a, s in SOUNDS.items()]
    return out


def rows(rng: random.Random) -> list[dict]:
    out = []
    for question, answer in questions(rng) * 2:  # each question twice, with other filler and system prompts
        prompt = [{"role": "user", "content": question}]
        if rng.random() < 0.2:
            prompt.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
        sentence = answer[0].upper() + answer[1:]
        rambling = f"{rng.choice(OPENINGS)} {sentence} {rng.choice(CLOSINGS)}"
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": CHOSEN + answer}],
                "rejected": [{"role": "assistant", "content": rambling}],
            }
        )
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    target = Path(__file__).with_name("sample_preferences.jsonl")
    pairs = rows(random.Random(3407))
    target.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    print(f"wrote {len(pairs)} preference pairs to {target}")
