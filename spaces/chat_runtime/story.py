"""Choose-your-own-adventure logic on top of ChatService, with no Gradio in it.

The model sees a story as a plain conversation: the system prompt, then the player's requests and
its own turns, formatted by the model's own chat template through ChatService, which also trims old
turns and keeps the system prompt. Nothing here writes template markers or splits a reply on them.

Every turn has one shape, a scene and then its choices:

    You stand on a rocky island. Far above, a light flickers.

    Choices:
    1. Climb to the lighthouse
    2. Search the shore

and the engines are made to write it while decoding: the request carries a GBNF grammar of the shape
(`turn_grammar`), which llama.cpp, xgrammar and the inference servers that take grammars enforce,
with each choice's length capped in the grammar. The scene streams as it is written; the choices
come when the turn is complete. After decoding, a choice that copies a sentence of the scene is
dropped, since it is no action. Fallbacks, each counted in `FALLBACKS` and logged: a reply not in
the shape (a server without structured output) has its choices recovered from a numbered list;
with fewer than two, the model is asked once more for choices only; after that a default set fills
in. A turn always ends with 2-4 choices.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

from . import limits
from .chat import ChatService
from .params import GenerationParams
from .templating import Message

log = logging.getLogger(__name__)

MIN_CHOICES, MAX_CHOICES = 2, 4
# Longest choice, in characters: a button label; the grammar enforces it while decoding.
MAX_CHOICE_CHARS = 60
# The line between the scene and its numbered choices.
CHOICES_HEADING = "Choices:"
_CHOICES_MARK = f"\n\n{CHOICES_HEADING}\n"
# The scene's length cap in the grammar comes from the reply's token budget: the tokens the choices
# may need (the heading, three choices of up to MAX_CHOICE_CHARS at ~4 characters a token) are kept
# for them, and the rest, at ~4 characters a token, is the scene's; never more than MAX_SCENE_CHARS.
CHOICES_RESERVE_TOKENS = 6 + 3 * (MAX_CHOICE_CHARS // 4 + 2)
CHARS_PER_TOKEN = 4
MIN_SCENE_CHARS, MAX_SCENE_CHARS = 160, 640
# Tokens for the follow-up request: three short lines, whatever the scene's own limit is.
FOLLOW_UP_MAX_NEW_TOKENS = 64
# Offered when the model gives no usable choices even when asked again: they fit any story.
DEFAULT_CHOICES = ("Look around carefully", "Press on ahead", "Turn back and think it over")
# The follow-up quotes the scene in a fresh conversation: asked inside the story, a 135M model
# mostly goes on telling it; asked this way it mostly answers with a numbered list.
FOLLOW_UP_REQUEST = "{scene}\n\nList three short actions the hero could take next, numbered 1 to 3."
# What a turn shows when the model wrote no scene at all (only choices, or nothing).
EMPTY_SCENE = "The story pauses, waiting for your next move."
GENRES = ("fantasy", "mystery", "science fiction", "fairy tale", "pirate adventure", "ghost story")
TONES = ("hopeful", "eerie", "funny", "tense", "whimsical", "gloomy")
# llama.cpp's DRY penalty at its documented starting strength, wherever the engine has it (llama.cpp
# in process and its server): the grammar keeps the first two choices apart, and DRY the rest. Greedy,
# over the 20 test titles, it raised the distinct choices per turn from 3.05 to 3.3.
DRY_MULTIPLIER = 0.8
# Turns that needed a fallback, by kind ("recovered", "follow-up", "default"), and choices dropped as
# copies of the scene ("copied"), since the process started: the log reports each.
FALLBACKS: Counter[str] = Counter()

# The turn shape as GBNF (llama.cpp's grammar format, which xgrammar and vLLM read as is). The
# scene is whole sentences (each ends with . ! ? or …, within SENTENCE_CHARS), as many as its cap
# allows, so the choices never begin mid-sentence; a scene line never starts with a list marker or
# a digit, so the scene cannot turn into a list. A choice is an action: it starts with one of
# ACTION_VERBS (a small model left free writes "The story has no dialogue" or a line of the scene),
# is words (no quotes, dashes, colons or digits: no line of dialogue, no "Go - the first part", no
# "4. Go 5. Run" inside one line), and its whole length is capped. No verb starts with "I": a model
# that means to write "I ..." would otherwise be steered into the verb and then into nonsense.
SENTENCE_CHARS = 160
ACTION_VERBS = (
    "Accept Answer Ask Attack Board Break Call Cast Chase Check Climb Close Cross Dance Decode Defend Dig "
    "Dive Drink Enter Escape Examine Explore Fight Find Flee Follow Free Gather Give Go Grab Greet Head Help "
    "Hide Hold Jump Knock Land Leave Light Listen Look Offer Open Pick Play Pull Push Read Refuse "
    "Repair Rescue Rest Return Ride Run Sail Scan Search Send Shout Signal Sing Sneak Speak Steer Swim Take Talk "
    "Tell Throw Touch Trade Trust Try Turn Visit Wait Walk Warn Whisper Write"
).split()
_SHAPE_RULES = r"""
scene    ::= sentence (gap sentence){0,%(more)d}
sentence ::= lead [^\n.!?…]{0,%(sentence)d} [.!?…] ["”’]?
gap      ::= " " | "\n" | "\n\n"
lead     ::= [^\n\t .!?…0-9#*>|•(\[-]
choice   ::= verb tail
tail     ::= " " [a-zA-Z] [a-zA-Z ,'’]{1,%(rest)d}
"""
# The first two choices start with different verbs, so every turn holds two different actions: a
# grammar cannot say "not the line before" in general, and greedy, the 135M model wrote one choice on
# every line ("Attack ik" four times) on 2 of the 20 test titles, each then needing the follow-up
# request. Lines 3 and 4 may repeat an earlier one; duplicates are dropped after decoding.
_TURN_ROOT = r"""root ::= scene "\n\nChoices:\n1. " two ("\n3. " choice ("\n4. " choice)?)?"""
_CHOICES_ROOT = r"""root ::= "1. " two "\n3. " choice"""


def scene_chars(max_new_tokens: int) -> int:
    """The scene's length cap for a reply of `max_new_tokens`, leaving room for its choices."""
    room = (max_new_tokens - CHOICES_RESERVE_TOKENS) * CHARS_PER_TOKEN
    return max(MIN_SCENE_CHARS, min(MAX_SCENE_CHARS, room))


def _verb_rules() -> str:
    """GBNF of the verbs: `verb` (any), and `two`, the first two choices with different verbs.

    "Any verb but V" is built from groups of verbs by first letter (the other letters' groups, and
    V's own group less V), so the grammar holds a few hundred alternatives, not one list of all the
    verbs for each verb."""
    groups: dict[str, list[str]] = {}
    for verb in ACTION_VERBS:
        groups.setdefault(verb[0].lower(), []).append(verb)
    rules = [f"verbs-{letter} ::= " + " | ".join(f'"{v}"' for v in verbs) for letter, verbs in groups.items()]
    rules.append("verb ::= " + " | ".join(f"verbs-{letter}" for letter in groups))
    for letter in groups:
        rules.append(f"other-{letter} ::= " + " | ".join(f"verbs-{o}" for o in groups if o != letter))
    for verb in ACTION_VERBS:
        letter = verb[0].lower()
        rest = [f'"{v}"' for v in groups[letter] if v != verb]
        rules.append(f"not-{verb.lower()} ::= " + " | ".join([f"other-{letter}", *rest]))
    rules.append("two ::= " + " | ".join(f'"{v}" tail "\\n2. " not-{v.lower()} tail' for v in ACTION_VERBS))
    return "\n".join(rules) + "\n"


def _rules(scene_chars: int) -> str:
    sentences = max(1, scene_chars // SENTENCE_CHARS)
    rest = MAX_CHOICE_CHARS - 2 - max(map(len, ACTION_VERBS))  # verb, space, first letter, rest: the cap holds
    shape = _SHAPE_RULES % {"more": sentences - 1, "sentence": SENTENCE_CHARS - 2, "rest": rest}
    return shape + _verb_rules()


def turn_grammar(max_new_tokens: int) -> str:
    """GBNF of a whole turn: a scene that fits the token budget, "Choices:", 2-4 numbered choices."""
    return _TURN_ROOT + _rules(scene_chars(max_new_tokens))


def choices_grammar() -> str:
    """GBNF of three numbered choices alone (the follow-up request's answer)."""
    return _CHOICES_ROOT + _rules(MIN_SCENE_CHARS)


# One numbered choice line of a reply not in the shape: "1. Go", "1) Go", "(1) Go", "**1.** Go",
# "Option 1: Go". Only for servers that cannot enforce the grammar.
_ITEM = re.compile(
    r"""^\s*(?:[-*•]\s+)?(?:\*\*|__)?\s*(?:(?:option|choice)\s*)?\(?(?P<n>[1-9])\s*[.):]
    (?:\s*(?:\*\*|__))?\s+(?P<text>\S.*?)\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
# "You could also take the boat", "I will take the boat" -> "take the boat": the button says
# what the player does.
_LEAD_WORDS = re.compile(
    r"^(?:(?:you|i|we|the hero|they|he|she)\s+(?:could|can|might|may|will|would|should)|(?:you|i|we)['’]ll)\s+"
    r"(?:also\s+)?(?:choose\s+to\s+|try\s+to\s+|decide\s+to\s+)?",
    re.IGNORECASE,
)
_LEAD_BOLD = re.compile(r"^(?:\*\*|__)(.+?)(?:\*\*|__)\s*[:\-–—]")
_SENTENCE_END = re.compile(r"[.!?…][\"”’')\]*]*(?=\s|$)")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?…])[\"”’')\]*]*\s+|\n+")
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-!|~$])")
# Unicode format characters kept in titles: zero-width (non-)joiners shape Indic scripts and emoji.
_KEEP_FORMAT = {"\u200c", "\u200d"}


@dataclass(frozen=True)
class Turn:
    """One step of a story: what the model was asked, the scene it wrote, and the choices after."""

    request: str  # what the model was sent as the user turn
    action: str  # what the page shows the player did ("" for the opening)
    scene: str
    choices: tuple[str, ...]
    # Where the choices came from: "model" (the turn shape), else a fallback: "recovered" (a numbered
    # list in free text), "follow-up" (asked once more) or "default".
    choices_from: str = "model"


@dataclass(frozen=True)
class Story:
    """A story so far: its title, genre and tone (cleaned) and its turns."""

    title: str
    genre: str = ""
    tone: str = ""
    turns: tuple[Turn, ...] = ()

    @classmethod
    def new(cls, title: object, genre: object = "", tone: object = "") -> "Story":
        """A new story; the fields are cleaned and cut to MAX_TITLE_CHARS. ValueError for no title."""
        given = {"title": title, "genre": genre, "tone": tone}
        for name, value in given.items():
            if value is not None and not isinstance(value, str):  # an API caller's number or list
                raise ValueError(f"The story's {name} must be text, got {type(value).__name__}: send it as a string.")
        title = clean_text(title)
        if not title:
            raise ValueError("Give your story a title first, e.g. “The Lighthouse at the End of the World”.")
        return cls(title, clean_text(genre), clean_text(tone))

    @property
    def choices(self) -> tuple[str, ...]:
        """The choices the player has now (none before the opening scene)."""
        return self.turns[-1].choices if self.turns else ()

    def opening_request(self) -> str:
        """The user turn that asks the model for the first scene.

        Phrased as a player's request, not a spec: asked for "the first scene, then three numbered
        choices", a 135M model mostly talks about choices; asked this way it mostly tells a scene."""
        genre = f"{self.genre} " if self.genre else ""
        tone = f", {self.tone} in tone" if self.tone else ""
        return f"Let's play. Tell the first scene of a {genre}story called “{self.title}”{tone}. I am the hero."

    def history(self) -> list[Message]:
        """The story as chat turns for the model: each request, then its turn in the turn shape."""
        messages: list[Message] = []
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.request})
            messages.append({"role": "assistant", "content": format_turn(turn.scene, turn.choices)})
        return messages

    def with_turn(self, turn: Turn) -> "Story":
        return replace(self, turns=self.turns + (turn,))

    def undo(self) -> "Story":
        """The story without its last turn (undoing the opening leaves the title, with no turns)."""
        return replace(self, turns=self.turns[:-1])


@dataclass(frozen=True)
class Parsed:
    """A reply split into the scene and the choices found after it."""

    scene: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Progress:
    """One update of a turn being told: the reply so far, and on the last update the finished turn."""

    text: str
    dropped_messages: int = 0
    notice: str = ""  # the engine's (its server restarted), on the first update
    finding_choices: bool = False  # the model is being asked again for choices
    turn: Turn | None = None


def clean_text(text: object, limit: int | None = None) -> str:
    """One line of user text (a title, a genre): control characters out, spaces collapsed, and cut
    to `limit` (default MAX_TITLE_CHARS) characters, ending in "…", never inside a letter's marks."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    limit = limits.MAX_TITLE_CHARS if limit is None else limit
    text = unicodedata.normalize("NFC", text)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Zs", "Zl", "Zp") or char in "\t\n\r\v\f":
            kept.append(" ")
        elif category == "Cc" or (category == "Cf" and char not in _KEEP_FORMAT) or category in ("Cs", "Co", "Cn"):
            continue  # NUL, bidi overrides, lone surrogates: invisible or harmful in a title
        else:
            kept.append(char)
    text = " ".join("".join(kept).split())
    if len(text) <= limit:
        return text
    cut = limit - 1  # room for the ellipsis
    # Kannada and other scripts build one letter from a base and its marks: cut before the base.
    while cut > 0 and (unicodedata.category(text[cut])[0] == "M" or text[cut] in _KEEP_FORMAT):
        cut -= 1
    return text[:cut].rstrip() + "…"


def escape_markdown(text: str) -> str:
    """Text that Markdown (and the HTML inside it) shows literally: markup is displayed, never run."""
    text = html.escape(text, quote=False)
    text = _MARKDOWN_SPECIALS.sub(r"\\\1", text)
    return re.sub(r"^(\s*\d+)\.", r"\1\\.", text, flags=re.MULTILINE)  # "1. x" must not become a list


def _clean_choice(text: str) -> str:
    lead = _LEAD_BOLD.match(text)
    if lead:  # "**Take the torch**: you light the way" -> the bold name of the choice
        text = lead.group(1)
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = " ".join(text.split()).strip(" \"“”'*_")
    name, sep, _ = text.partition(": ")
    if sep and len(name.split()) >= 2:  # "Open the gate: it creaks" -> "Open the gate"
        text = name
    text = _LEAD_WORDS.sub("", text)
    first = _SENTENCE_END.search(text, 12)  # not the dot of a short "Mr." or "Dr."
    if first and first.end() < len(text):  # one sentence is enough for a button
        text = text[: first.end()]
    if len(text) > MAX_CHOICE_CHARS:
        text = text[: MAX_CHOICE_CHARS - 1]
        comma = text.rfind(", ")
        text = text[:comma] if comma > MAX_CHOICE_CHARS // 2 else text.rsplit(" ", 1)[0] + "…"
    text = text.rstrip(" .,;:").strip(" \"“”'")
    text = text[:1].upper() + text[1:]  # a button label: "fight the troll" -> "Fight the troll"
    return text if sum(c.isalpha() for c in text) >= 2 else ""


def _key(text: str) -> str:
    return "".join(c for c in text.casefold() if c.isalnum())


def _unique(choices: list[str], skip: str = "") -> list[str]:
    """Choices without repeats, and without ones that repeat `skip` (the story's title): "The Lost
    Lighthouse 2" or "The Lost Lighthouse is a story about..." is no action."""
    title = _key(skip)
    seen, kept = {title} - {""}, []
    for choice in choices:
        key = _key(choice)
        if len(title) >= 8 and key.startswith(title):
            continue
        if choice and key not in seen:
            seen.add(key)
            kept.append(choice)
    return kept


def copies_scene(choice: str, scene: str) -> bool:
    """A choice that is a sentence of the scene, or a long run of its words, is no action: "She
    knows that this journey will be long" tells, it does not offer."""
    key = _key(choice)
    if any(_key(sentence) == key for sentence in _SENTENCE_SPLIT.split(scene)):
        return True
    return len(choice.split()) >= 5 and key in _key(scene)


def split_turn(reply: str, cut_off: bool = False) -> Parsed | None:
    """A reply in the turn shape split into its scene and choices; None when it is not in the shape.
    A reply `cut_off` by its token limit loses its last choice (likely unfinished), unless only two
    are left."""
    scene, mark, listing = reply.rpartition(_CHOICES_MARK)
    if not mark or not scene.strip():
        return None
    items = []
    for n, line in enumerate(listing.split("\n"), 1):
        if not line.startswith(f"{n}. ") or n > MAX_CHOICES:
            return None
        items.append(line[len(f"{n}. ") :])
    if cut_off and len(items) > MIN_CHOICES:
        items = items[:-1]
    return Parsed(scene.strip(), tuple(_clean_choice(t) for t in items))


def scene_so_far(text: str) -> str:
    """The scene of a reply being streamed: the text before its choices (and before the start of
    their heading, so the page never shows a stray "Choi")."""
    cut = text.find(_CHOICES_MARK)
    if cut >= 0:
        return text[:cut]
    for size in range(len(_CHOICES_MARK) - 1, 0, -1):
        if text.endswith(_CHOICES_MARK[:size]):
            return text[:-size]
    return text


def _numbered_runs(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Runs of items numbered 1, 2, 3...: (first line number, item texts). Blank and unnumbered
    lines inside a run (an item's description) do not end it."""
    runs: list[tuple[int, list[str]]] = []
    items, start = [], 0
    for n, line in enumerate(lines):
        match = _ITEM.match(line)
        if not match:
            continue
        index = int(match.group("n"))
        if items and index == len(items) + 1:
            items.append(match.group("text"))
        elif index == 1:
            if items:
                runs.append((start, items))
            items, start = [match.group("text")], n
        elif items:
            runs.append((start, items))
            items = []
    if items:
        runs.append((start, items))
    return runs


def parse_reply(reply: str, expect_scene: bool = True, cut_off: bool = False) -> Parsed:
    """Recover the scene and choices of a reply not in the turn shape (from a server that cannot
    enforce the grammar): the choices are its last numbered list, cleaned, de-duplicated and at most
    MAX_CHOICES.

    With `expect_scene` (a story turn), a reply that is only a list is the story told as a list:
    all scene, no choices. Without it (the answer to a request for choices) it is the choices.
    A reply `cut_off` by its token limit loses its last choice, unless only two are left."""
    lines = reply.strip().splitlines()
    runs = [run for run in _numbered_runs(lines) if run[0] > 0 or not expect_scene]
    best = next((run for run in reversed(runs) if len(run[1]) >= MIN_CHOICES), None)
    if best:
        items = best[1][:-1] if cut_off and len(best[1]) > MIN_CHOICES else best[1]
        choices = _unique([_clean_choice(t) for t in items])
        if len(choices) >= MIN_CHOICES:
            return Parsed(tidy_scene("\n".join(lines[: best[0]])), tuple(choices[:MAX_CHOICES]))
    if runs:  # one numbered item after the scene: keep it, a follow-up may add more
        start, items = runs[-1]
        return Parsed(tidy_scene("\n".join(lines[:start])), tuple(_unique([_clean_choice(t) for t in items])))
    return Parsed(tidy_scene(reply), ())


def tidy_scene(text: str) -> str:
    """A scene that reads as finished: no trailing "Choices:" lead-in, no sentence cut off
    by the token limit (cut back to the last full sentence, or marked with "…")."""
    lines = text.strip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].rstrip().endswith(":")):
        lines.pop()
    text = "\n".join(lines).strip()
    if not text:
        return EMPTY_SCENE
    ends = list(_SENTENCE_END.finditer(text))
    if ends and ends[-1].end() == len(text):
        return text
    if ends and ends[-1].end() > max(len(text) // 3, 12):
        return text[: ends[-1].end()]
    return text.rstrip(" ,;:-–—") + "…"


def format_choices(choices: tuple[str, ...] | list[str]) -> str:
    """Choices as the numbered lines the system prompt asks for."""
    return "\n".join(f"{i}. {choice}" for i, choice in enumerate(choices, 1))


def format_turn(scene: str, choices: tuple[str, ...] | list[str]) -> str:
    """A turn in the turn shape: the scene, "Choices:", the numbered choices (what the grammar makes)."""
    return f"{scene}{_CHOICES_MARK}{format_choices(choices)}"


def action_request(action: object) -> str:
    """The player's action (a choice or typed text) as the next user turn; ValueError when empty."""
    action = clean_text(action, limits.MAX_MESSAGE_CHARS)
    if not action:
        raise ValueError("Type what you do next, or pick one of the choices.")
    return action


class StoryTeller:
    """Tells a story one turn at a time through a ChatService, under a fixed system prompt."""

    def __init__(self, service: ChatService, system_prompt: str):
        self.service = service
        self.system_prompt = system_prompt

    def tell(self, story: Story, action: str | None, params: GenerationParams) -> Iterator[Progress]:
        """Stream the next turn: the opening when `action` is None, else the reply to the action.

        Raises ValueError before any text for bad input. The updates carry the scene so far; the last
        one the finished turn, with 2-4 choices. Closing the iterator cancels the generation.
        """
        request = story.opening_request() if action is None else action_request(action)
        params = replace(params, grammar=turn_grammar(params.max_new_tokens), dry_multiplier=DRY_MULTIPLIER)
        text, dropped, pieces = "", 0, 0
        stream = self.service.reply(request, story.history(), self.system_prompt, params)
        try:
            for pieces, reply in enumerate(stream):
                text, dropped = reply.text, reply.dropped_messages
                yield Progress(scene_so_far(text), dropped, reply.notice)
        finally:
            stream.close()
        # llama.cpp streams a piece per token, so a reply with as many pieces as its token limit
        # was cut off, mid-choice likely (an engine that streams words never looks cut off).
        cut_off = pieces >= params.max_new_tokens
        parsed, source = split_turn(text, cut_off), "model"
        if parsed is None:  # free text: a server that cannot enforce the grammar, or a reply cut short
            parsed, source = parse_reply(text, cut_off=cut_off), "recovered"
        scene = parsed.scene or EMPTY_SCENE
        choices = self._actions(parsed.choices, scene, story.title)
        if len(choices) < MIN_CHOICES:
            yield Progress(scene, dropped, finding_choices=True)
            asked = yield from self._ask_for_choices(scene, params)
            choices, source = self._actions(choices + asked, scene, story.title), "follow-up"
        if len(choices) < MIN_CHOICES:
            choices, source = _unique(choices + list(DEFAULT_CHOICES))[: len(DEFAULT_CHOICES)], "default"
        if source != "model":
            FALLBACKS[source] += 1
            log.warning("story turn needed a fallback (%s); fallbacks so far: %s", source, dict(FALLBACKS))
        turn = Turn(request, "" if action is None else request, scene, tuple(choices[:MAX_CHOICES]), source)
        yield Progress(turn.scene, dropped, turn=turn)

    @staticmethod
    def _actions(choices, scene: str, title: str) -> list[str]:
        """The choices a player can take: not empty, not repeated, not the title, not a copy of a
        sentence of the scene (each copy dropped is counted)."""
        kept = []
        for choice in _unique(list(choices), skip=title):
            if copies_scene(choice, scene):
                FALLBACKS["copied"] += 1
                log.info("dropped a choice that copies the scene: %r", choice)
            else:
                kept.append(choice)
        return kept

    def _ask_for_choices(self, scene: str, params: GenerationParams):
        """Ask once more, for choices only; yields progress (so a closed page cancels it), returns them."""
        params = replace(
            params, max_new_tokens=FOLLOW_UP_MAX_NEW_TOKENS, grammar=choices_grammar(), dry_multiplier=DRY_MULTIPLIER
        )
        text, pieces = "", 0
        stream = self.service.reply(FOLLOW_UP_REQUEST.format(scene=scene), [], self.system_prompt, params)
        try:
            for pieces, reply in enumerate(stream):
                text = reply.text
                yield Progress(scene, finding_choices=True)
        except ValueError as err:  # the request does not fit a small context: the defaults will do
            log.info("no follow-up request for choices: %s", err)
        finally:
            stream.close()
        return list(parse_reply(text, expect_scene=False, cut_off=pieces >= params.max_new_tokens).choices)


def transcript(story: Story | None) -> list[Message]:
    """The story as chat messages for a page: the player's actions (escaped) and the scenes."""
    messages: list[Message] = []
    for turn in story.turns if story else ():
        if turn.action:
            messages.append({"role": "user", "content": escape_markdown(turn.action)})
        messages.append({"role": "assistant", "content": turn.scene})
    return messages


def heading(story: Story) -> str:
    """The story's title line in Markdown, its text escaped, with genre and tone under it."""
    details = " · ".join(escape_markdown(v) for v in (story.genre, story.tone) if v)
    return f"# {escape_markdown(story.title)}" + (f"\n\n*{details}*" if details else "")


def to_markdown(story: Story) -> str:
    """The whole story as a Markdown document: title, scenes, the player's actions, choices left."""
    parts = [heading(story)]
    for turn in story.turns:
        if turn.action:
            parts.append(f"> **You:** {escape_markdown(turn.action)}")
        parts.append(turn.scene)
    if story.choices:
        parts.append("**What next?**\n\n" + format_choices([escape_markdown(c) for c in story.choices]))
    return "\n\n".join(parts) + "\n"


def file_name(story: Story) -> str:
    """A safe file name for the story's Markdown: the title's ASCII letters, else "story"."""
    ascii_title = unicodedata.normalize("NFKD", story.title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_title).strip("-").lower()[:60].strip("-")
    return f"{slug or 'story'}.md"
