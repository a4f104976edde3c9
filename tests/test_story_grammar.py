"""Story turns in the turn shape on the real embedded model, through each engine's own constrained
decoding: llama.cpp's grammar sampler, `python -m llama_cpp.server`'s `grammar` field, and xgrammar
under transformers. Every turn has 2-4 choices, none a sentence of its scene, each within the cap;
the fallbacks needed are counted and printed (the target is none)."""

import json
from pathlib import Path

import pytest

from chat_runtime import ChatService, GenerationParams
from chat_runtime.engines.llamacpp_engine import CheckedSampler
from chat_runtime.story import (
    DRY_MULTIPLIER,
    FALLBACKS,
    MAX_CHOICE_CHARS,
    MAX_CHOICES,
    MIN_CHOICES,
    Story,
    StoryTeller,
    copies_scene,
    scene_so_far,
    split_turn,
    turn_grammar,
)

pytestmark = pytest.mark.e2e

# Twenty titles over the storymaker's genres and tones, and a few of neither.
TITLES = [
    (row["title"], row["genre"], row["tone"])
    for row in map(
        json.loads, (Path(__file__).parents[1] / "training/eval/story_titles.jsonl").read_text().splitlines()
    )
]
PARAMS = GenerationParams(temperature=0.0, max_new_tokens=96)


@pytest.fixture(scope="module")
def system_prompt(repo_root):
    return (repo_root / "storymaker_app" / "system_prompt.md").read_text().strip()


def tell_openings(service: ChatService, system_prompt: str, titles) -> dict:
    """The opening turn of each title, checked; returns the fallbacks the turns needed."""
    teller = StoryTeller(service, system_prompt)
    before = FALLBACKS.copy()
    for title, genre, tone in titles:
        updates = list(teller.tell(Story.new(title, genre, tone), None, PARAMS))
        turn = updates[-1].turn
        assert MIN_CHOICES <= len(turn.choices) <= MAX_CHOICES, (title, turn)
        assert turn.scene.strip() and "Choices:" not in turn.scene, (title, turn.scene)
        for choice in turn.choices:
            assert 2 <= len(choice) <= MAX_CHOICE_CHARS, (title, choice)
            assert not copies_scene(choice, turn.scene), (title, choice, turn.scene)
        assert all("Choices:" not in u.text for u in updates[:-1]), "the page sees only the scene while it streams"
    needed = {kind: FALLBACKS[kind] - before[kind] for kind in FALLBACKS if FALLBACKS[kind] > before[kind]}
    print(f"\n{service.engine.name}: {len(titles)} openings, fallbacks needed: {needed or 'none'}")
    # A turn in the shape has two choices with different verbs, so only a turn cut off by its token
    # limit (and recovered) may need the follow-up request.
    assert needed.get("follow-up", 0) <= needed.get("recovered", 0) and "default" not in needed, needed
    return needed


# Under a grammar a reply leaves the turn shape only when it reaches max_new_tokens first: the grammar
# caps the scene by an estimate of characters per token (story.CHARS_PER_TOKEN). Of these twenty
# openings none did on AVX-512 machines, and one did on an AVX2 EPYC, whose rounding picks other
# words; the turn is still whole (its choices recovered, every check above holds).
AT_MOST_RECOVERED = 1


def test_every_turn_on_llamacpp_is_a_scene_and_real_choices(llamacpp_service, system_prompt):
    needed = tell_openings(llamacpp_service, system_prompt, TITLES)
    assert needed.get("recovered", 0) <= AT_MOST_RECOVERED, "llama.cpp's grammar makes replies turns in the shape"


def test_every_turn_through_llama_cpp_server_is_a_scene_and_real_choices(llama_servers, system_prompt):
    server = llama_servers().start()
    try:
        needed = tell_openings(ChatService.from_spec(server.spec()), system_prompt, TITLES)
    finally:
        server.stop()
    assert needed.get("recovered", 0) <= AT_MOST_RECOVERED, (
        "the server's `grammar` field makes replies turns in the shape"
    )


def test_every_turn_through_llama_server_is_a_scene_and_real_choices(llama_server_service, system_prompt):
    needed = tell_openings(llama_server_service, system_prompt, TITLES)
    # llama-server counts the prompt in the repetition penalty's window, so its turns are other words:
    # on the Zen 4, none of the 20 was cut off by its token limit at 2 threads, 2 at 1 thread (the
    # suite's); each was still a whole turn (every check in tell_openings held).
    assert needed.get("recovered", 0) <= 2, "llama-server's `grammar` field makes replies turns in the shape"


def test_every_turn_on_transformers_with_xgrammar_is_a_scene_and_real_choices(transformers_service, system_prompt):
    needed = tell_openings(transformers_service, system_prompt, TITLES[:5])
    assert "recovered" not in needed, "xgrammar makes every reply a turn in the shape"


def test_the_grammar_holds_even_when_the_player_asks_for_something_else(llamacpp_service, system_prompt):
    ids = llamacpp_service.engine.encode_chat([{"role": "user", "content": "Write a numbered list of ten fruits."}])
    import threading

    params = GenerationParams(temperature=0.0, max_new_tokens=96, grammar=turn_grammar(96))
    reply = "".join(llamacpp_service.engine.stream(ids, params, threading.Event()))
    parsed = split_turn(reply)
    assert parsed is not None and MIN_CHOICES <= len(parsed.choices) <= MAX_CHOICES, reply
    assert scene_so_far(reply) == parsed.scene


@pytest.mark.parametrize(
    "second, allowed",
    [("Board the ship", True), ("Accept the deal", True), ("Attack the crew", False), ("Attack ik", False)],
)
def test_the_second_choice_starts_with_another_verb_than_the_first(llamacpp_service, second, allowed):
    """Two different actions in every turn: the grammar refuses a second choice with the first's verb."""
    from llama_cpp import LlamaGrammar, llama_sampler_accept

    llm = llamacpp_service.engine.llm
    grammar = LlamaGrammar.from_string(turn_grammar(96), verbose=False)
    text = f"A storm rises over the bay.\n\nChoices:\n1. Attack ik\n2. {second}"
    with llamacpp_service.engine._lock:
        sampler = CheckedSampler(llm._init_sampler(temp=0.0), llm, grammar, 0.0, [], greedy=True)
        try:
            followed = True
            for token in llm.tokenize(text.encode(), add_bos=False, special=False):
                followed = followed and sampler._allowed(token)
                if followed:
                    llama_sampler_accept(sampler.grammar, token)
        finally:
            sampler.close()
    assert followed is allowed


def test_greedy_checks_the_next_best_tokens_before_the_whole_vocabulary_and_picks_the_same(
    llamacpp_service, system_prompt, monkeypatch
):
    """After the grammar rejects the best token, the llama.cpp engine tries the next best ones alone;
    the turn is the one that testing the whole vocabulary at each rejection gives (GREEDY_CHECKED = 1
    checks only the rejected token, so every rejection tests the whole vocabulary)."""
    story = Story.new(*TITLES[0])
    params = GenerationParams(temperature=0.0, max_new_tokens=96)
    turns = {}
    for checked in (CheckedSampler.GREEDY_CHECKED, 1):
        monkeypatch.setattr(CheckedSampler, "GREEDY_CHECKED", checked)
        *_, last = StoryTeller(llamacpp_service, system_prompt).tell(story, None, params)
        turns[checked] = last.turn
    assert turns[1].choices_from == "model" and len(set(turns.values())) == 1, turns


def test_dry_penalises_a_token_that_would_extend_a_repeat_of_the_prompt(llamacpp_service):
    """The llama.cpp engine's DRY (llama.cpp's own sampler): after "Open the iron door. Open the iron",
    a " door" that leads by a little loses to the runner-up; without DRY greedy takes it."""
    import numpy as np

    engine = llamacpp_service.engine
    llm = engine.llm
    prompt = llm.tokenize(b" Open the iron door. Open the iron", add_bos=False, special=False)
    door, runner_up = llm.tokenize(b" door", add_bos=False)[0], llm.tokenize(b" gate", add_bos=False)[0]
    logits = np.zeros(llm.n_vocab(), dtype=np.float32)
    logits[door], logits[runner_up] = 1.0, 0.5
    picked = {}
    with engine._lock:
        llm.dry_multiplier = 0.0  # llama-cpp-python's own chain from _init_sampler (each reply sets its own)
        for dry in (0.0, DRY_MULTIPLIER):
            sampler = CheckedSampler(llm._init_sampler(temp=0.0), llm, None, dry, prompt, greedy=True)
            picked[dry] = sampler._pick(logits, with_grammar=False)
            sampler.close()
    assert picked == {0.0: door, DRY_MULTIPLIER: runner_up}
