import pytest

from chat_runtime.templating import normalize_history, trim_to_budget

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions


def test_gradio_content_blocks_become_text_and_split_turns_merge():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}], "metadata": None},
        {"role": "assistant", "content": "Hi!"},
        {"role": "assistant", "content": [{"type": "text", "text": "How can I help?"}]},
        {"role": "assistant", "content": "Not answered: too long", "metadata": {"title": "notice"}},
        {"role": "user", "content": [{"type": "file", "file": {"path": "x.png"}}, {"type": "text", "text": "see"}]},
    ]
    assert normalize_history(history) == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!\nHow can I help?"},
        {"role": "user", "content": "see"},
    ]


@pytest.mark.parametrize(
    "history, fragment",
    [
        ("not a list", "history must be a list"),
        ([["hi", "there"]], "history item 0 must be a dict"),
        ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
        ([{"role": "user", "content": 42}], "message content must be text"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "unsupported message content block"),
    ],
)
def test_malformed_history_is_refused_clearly(history, fragment):
    with pytest.raises(ValueError) as err:
        normalize_history(history)
    assert fragment in str(err.value)


def _words(messages):
    return sum(len(m["content"].split()) for m in messages)


def test_trimming_drops_whole_oldest_turns_and_keeps_the_system_prompt():
    system = {"role": "system", "content": "be kind"}
    turns = []
    for i in range(5):
        turns += [
            {"role": "user", "content": f"question {i} " * 5},
            {"role": "assistant", "content": f"answer {i} " * 5},
        ]
    last = {"role": "user", "content": "final question"}
    kept, dropped = trim_to_budget([system, *turns, last], _words, budget=45)
    assert kept[0] == system and kept[-1] == last
    assert kept[1]["role"] == "user"  # the conversation still opens with a user turn
    assert dropped % 2 == 0 and dropped > 0  # whole user+assistant pairs
    assert _words(kept) <= 45
    assert kept[1:-1] == turns[dropped:]


def test_a_message_that_cannot_fit_is_refused():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "word " * 100}]
    with pytest.raises(ValueError, match="too long for this model"):
        trim_to_budget(messages, _words, budget=10)


def test_nothing_is_dropped_when_it_fits():
    messages = [{"role": "user", "content": "a b"}]
    assert trim_to_budget(messages, _words, budget=10) == (messages, 0)
