"""Bad input to both running apps, through the API (gradio_client, and raw HTTP where the client
cannot send a value); the page's share is in test_chatbot_app.py and test_storymaker_app.py. Each gets a message that says what to change (or a
documented default), and the app goes on answering: every test ends with a normal request.

What an API caller sees:
- chatbot `/chat`: a refused request returns a notice message instead of the reply, a dict whose
  `metadata.title` is "⚠️ Not answered" and whose `content` says what to change;
- storymaker `/begin`, `/act`: an empty title or action fails the call with gradio_client's
  ValidationError naming the field; a refused setting or message returns the story as it was, with a
  "⚠️ Not told" notice as its last message;
- a setting sent as None takes its default (the documented clamp: nothing is silently changed).
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

pytest.importorskip("gradio_client", reason="Gradio is not in requirements-gpu.txt (a Space installs its own)")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

pytestmark = pytest.mark.e2e

QUICK = dict(temperature=0, max_new_tokens=4)
HOSTILE = "Hi \x00\x07\x1b[31m\x1b[2J \u202eabc\u202c ನಮಸ್ಕಾರ 👋🏽 مرحبا بك 你好 — say hello back."
LONG = "x" * 100_000


@pytest.fixture(scope="module")
def chat_client(chatbot):
    return Client(chatbot[1], verbose=False)


@pytest.fixture(scope="module")
def story_client(storymaker):
    return Client(storymaker[1], verbose=False)


def notice_of(reply) -> str | None:
    """The notice text of a /chat reply, or None when it is a normal answer."""
    if isinstance(reply, dict) and (reply.get("metadata") or {}).get("title"):
        return reply["content"]
    return None


def assert_chat_still_answers(client: Client) -> None:
    reply = client.predict(message="Say hello.", **QUICK, api_name="/chat")
    assert isinstance(reply, str) and reply.strip(), reply


def raw_call(url: str, api_name: str | int, data_json: str, session: str | None = None, timeout: float = 120) -> dict:
    """Call an endpoint (by api_name, or by its index for ChatInterface's internal events) with a
    hand-written JSON body (NaN, which gradio_client refuses to send; any shape at all) through
    Gradio's queue, as any HTTP client can; return the finished event message."""
    if isinstance(api_name, int):
        fn_index = api_name
    else:
        config = httpx.get(url + "config", timeout=10).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    session = session or uuid.uuid4().hex
    body = f'{{"data": {data_json}, "fn_index": {fn_index}, "session_hash": "{session}", "trigger_id": null}}'
    joined = httpx.post(
        url + "gradio_api/queue/join", content=body, headers={"content-type": "application/json"}, timeout=10
    )
    assert joined.status_code == 200, joined.text
    with httpx.stream(
        "GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=timeout
    ) as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


# Chatbot, through gradio_client ---------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"message": ""}, "Type a message first"),
        ({"message": "  \n\t "}, "Type a message first"),
        ({"message": None}, "Type a message first"),
        ({"message": LONG}, "Your message has 100,000 characters; the limit is 20,000. Shorten it"),
        ({"temperature": 5}, "temperature must be between 0 and 2, got 5"),
        ({"temperature": -1}, "temperature must be between 0 and 2, got -1"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
        ({"top_p": [0.5]}, "top_p must be a number, got list"),
        ({"repetition_penalty": 0.5}, "repetition_penalty must be between 1 and 2, got 0.5"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1 and 2048, got 0"),
        ({"max_new_tokens": -1}, "max_new_tokens must be between 1 and 2048, got -1"),
        ({"max_new_tokens": 10**9}, "max_new_tokens must be between 1 and 2048, got 1000000000"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_chat_api_refuses_bad_input_with_a_notice_saying_what_to_change(chat_client, values, expected):
    reply = chat_client.predict(**{"message": "hi", **QUICK, **values}, api_name="/chat")
    assert notice_of(reply) is not None, f"expected a notice, got an answer: {reply!r}"
    assert expected in notice_of(reply)
    assert "Traceback" not in notice_of(reply)
    assert_chat_still_answers(chat_client)


def test_chat_api_settings_sent_as_none_take_their_defaults(chatbot, chat_client, monkeypatch):
    engine = chatbot[0].service.engine
    seen = []
    real_stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda ids, p, c: (seen.append(p), real_stream(ids, p, c))[1])
    reply = chat_client.predict(
        message="Say hello.", temperature=None, top_p=None, repetition_penalty=None, max_new_tokens=4, api_name="/chat"
    )
    assert isinstance(reply, str) and reply.strip()
    from chat_runtime import DEFAULTS

    assert (seen[-1].temperature, seen[-1].top_p, seen[-1].repetition_penalty) == (
        DEFAULTS.temperature,
        DEFAULTS.top_p,
        DEFAULTS.repetition_penalty,
    )


def test_chat_api_refuses_nan_and_infinity_sent_over_raw_http(chatbot, chat_client):
    _, url = chatbot
    for value in ("NaN", "Infinity", "-Infinity"):
        done = raw_call(url, "chat", f'["hi", null, "Be brief.", {value}, 0.9, 4, 1.1]')
        assert done["success"], done
        reply = done["output"]["data"][0]
        assert notice_of(reply) and "temperature must be a finite number" in notice_of(reply), reply
    assert_chat_still_answers(chat_client)


def test_chat_api_answers_control_characters_and_mixed_scripts_normally(chatbot, chat_client, monkeypatch):
    engine = chatbot[0].service.engine
    prompts = []
    real_stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda ids, p, c: (prompts.append(ids), real_stream(ids, p, c))[1])
    reply = chat_client.predict(message=HOSTILE, temperature=0, max_new_tokens=12, api_name="/chat")
    assert isinstance(reply, str) and reply.strip(), reply
    # The model saw the message as sent: every script, and the control characters as plain text.
    prompt = engine.llm.detokenize(prompts[-1], special=True).decode("utf-8", "replace")
    for part in ("ನಮಸ್ಕಾರ", "👋🏽", "مرحبا بك", "你好", "\u202eabc"):
        assert part in prompt
    assert_chat_still_answers(chat_client)


def test_chat_api_has_no_history_parameter_and_refuses_a_malformed_one_sent_inside(chatbot, chat_client):
    """/chat keeps each session's history on the server: an API caller cannot pass one. The only way in
    is ChatInterface's internal events, where Gradio's message model refuses anything malformed."""
    _, url = chatbot
    params = [
        p["parameter_name"]
        for p in chat_client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/chat"]["parameters"]
    ]
    assert params == ["message", "system_prompt", "temperature", "top_p", "max_new_tokens", "repetition_penalty"]
    config = httpx.get(url + "config", timeout=10).json()
    chatbot_id = next(c["id"] for c in config["components"] if c.get("type") == "chatbot")
    # The internal event that copies the chat box into the session's history (used by Undo, Edit, Retry).
    copy_fn = next(d["id"] for d in config["dependencies"] if d["inputs"] == [chatbot_id] and len(d["outputs"]) == 2)
    malformed = {
        '[{"role": "wizard", "content": [{"type": "text", "text": "hi"}]}]': "has role 'wizard'; expected one of",
        '[{"content": [{"type": "text", "text": "no role"}]}]': None,
        '{"role": "user", "content": "a dict, not a list"}': None,
        '[123, "text"]': None,
        '[{"role": "user", "content": {"weird": 1}}]': None,
    }
    for history, notice in malformed.items():
        session = uuid.uuid4().hex
        copied = raw_call(url, copy_fn, f"[{history}]", session)
        if notice is None:  # refused by Gradio's message model, with its generic error: nothing is kept
            assert copied["success"] is False, (history, copied)
            assert "Traceback" not in json.dumps(copied)
            continue
        # Accepted by Gradio: the runtime refuses it at the next message of that session, saying why.
        assert copied["success"], copied
        done = raw_call(url, "chat", '["hi", null, "Be brief.", 0, 0.9, 4, 1.1]', session)
        reply = done["output"]["data"][0]
        assert notice_of(reply) and notice in notice_of(reply), reply
    assert_chat_still_answers(chat_client)


# Storymaker, through gradio_client ------------------------------------------------------------


def story_notice(result) -> str | None:
    """The notice under the story of a /begin or /act result, if any."""
    story = result[2]
    last = story[-1] if story else {}
    if (last.get("metadata") or {}).get("title"):
        content = last["content"]
        return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    return None


@pytest.mark.parametrize(
    "call, expected",
    [
        (dict(api_name="/begin", title=""), "Give your story a title first"),
        (dict(api_name="/begin", title="   "), "Give your story a title first"),
        (dict(api_name="/begin", title=None), "Give your story a title first"),
        (dict(api_name="/act", action="I open the door"), "Begin a story first"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_story_api_refuses_an_empty_title_or_an_action_before_a_story(story_client, call, expected):
    story_client.reset_session()
    with pytest.raises(ValidationError, match=expected):
        story_client.predict(**QUICK, **call)


def test_story_api_bad_settings_and_actions_get_a_notice_and_keep_the_story(story_client):
    story_client.reset_session()
    for values, expected in [
        (dict(temperature="hot"), "temperature must be a number, got 'hot'"),
        (dict(max_new_tokens=0), "max_new_tokens must be between 1 and 2048, got 0"),
        (dict(max_new_tokens=-1), "max_new_tokens must be between 1 and 2048, got -1"),
        (dict(max_new_tokens=10**9), "max_new_tokens must be between 1 and 2048, got 1000000000"),
        (dict(top_p=2), "top_p must be between 0.05 and 1, got 2"),
        (dict(tone=12), "The story's tone must be text, got int"),
    ]:
        result = story_client.predict(title="The Glass Key", **{**QUICK, **values}, api_name="/begin")
        assert story_notice(result) and expected in story_notice(result), result
        assert result[0] == "" and result[1] == []  # no story was begun
    # A hostile title with every script and control characters begins a story, cut and shown as text.
    title, choices, story, _, _ = story_client.predict(
        title=HOSTILE + " " + LONG, genre=None, tone="", temperature=0, max_new_tokens=8, api_name="/begin"
    )
    assert title.startswith("# Hi") and "ನಮಸ್ಕಾರ" in title and "x" * 200 not in title
    assert 2 <= len(choices) <= 4 and story_notice((title, choices, story)) is None
    # Bad actions: refused with a notice; the story is kept as it was.
    # A 100,000-character action is cut to FINCH_MAX_MESSAGE_CHARS, which is still more than the context holds.
    for action, expected in [("  ", None), (LONG, "too long for this model")]:
        if expected is None:
            with pytest.raises(ValidationError, match="Type what you do next"):
                story_client.predict(action=action, **QUICK, api_name="/act")
            continue
        result = story_client.predict(action=action, **QUICK, api_name="/act")
        assert expected in story_notice(result) and result[1] == choices
        assert [m["role"] for m in result[2][:-1]] == ["assistant"]  # the opening scene, still alone
    # The story goes on with an action in every script.
    result = story_client.predict(action=HOSTILE, **QUICK, api_name="/act")
    assert story_notice(result) is None and [m["role"] for m in result[2]] == ["assistant", "user", "assistant"]
    assert 2 <= len(result[1]) <= 4
    # Undo and restart past the ends are harmless.
    for name in ("/undo", "/undo", "/undo", "/restart", "/restart"):
        story_client.predict(api_name=name)
    assert story_client.predict(api_name="/undo")[:2] == ("", [])


def test_story_api_refuses_nan_over_raw_http(storymaker):
    _, url = storymaker
    done = raw_call(url, "begin", '["The Glass Key", "mystery", "eerie", null, NaN, 0.9, 4, 1.1]')
    assert done["success"], done
    story = done["output"]["data"][3]  # state, heading, choices, story, ...
    assert "temperature must be a finite number" in json.dumps(story)
    title, *_ = Client(url, verbose=False).predict(title="The Glass Key", **QUICK, api_name="/begin")
    assert title.startswith("# The Glass Key")
