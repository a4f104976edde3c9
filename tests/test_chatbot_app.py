"""The chatbot in a real browser (Debian's chromium via Playwright), on the embedded model.

The app runs in this process, built exactly as `python chatbot_app/app.py` builds it, so the
tests can also look at the runtime: that Stop really ends generation, and what the model saw.
"""

import time

import pytest

pytestmark = pytest.mark.e2e

BOT = "[data-testid=bot]"
CHAT_INPUT = "#chat-input textarea"


def open_chat(page, url):
    page.goto(url)
    page.locator(CHAT_INPUT).wait_for()


def set_setting(page, label, value):
    """Open the Generation settings (once), type a value into a slider's number box, and wait
    until the slider itself shows it (the page only sends values the slider has taken)."""
    box = page.get_by_label(f"number input for {label}")
    if not box.is_visible():
        page.get_by_text("Generation settings", exact=True).click()
    slider = box.locator("xpath=ancestor::div[contains(@class, 'block')][1]//input[@type='range']")
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        try:
            page.wait_for_function(
                "([el, v]) => Number(el.value) === v", arg=[slider.element_handle(), float(value)], timeout=2000
            )
            return
        except Exception:
            continue  # the accordion was still mounting and dropped the value: type it again
    raise AssertionError(f"the {label} slider did not take {value}")


def send(page, text):
    box = page.locator(CHAT_INPUT)
    box.fill(text)
    box.press("Enter")


def wait_idle(page, timeout=90_000):
    """Wait until the reply has finished streaming (the submit button is back)."""
    page.locator("button.submit-button").wait_for(state="visible", timeout=timeout)


# In the page: every text the last reply shows, in order, as the DOM changes.
RECORD_BOT_TEXTS = """() => {
  window.finchBotTexts = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('[data-testid=bot]');
    const text = bots.length ? bots[bots.length - 1].innerText : '';
    if (window.finchBotTexts[window.finchBotTexts.length - 1] !== text) window.finchBotTexts.push(text);
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


def last_bot_text(page):
    bots = page.locator(BOT)
    return bots.nth(bots.count() - 1).inner_text() if bots.count() else ""


def wait_replies(page, count, timeout=90_000):
    """Wait until the page shows `count` replies and the last has finished streaming. (Waiting a
    fixed time for a reply to start, then for the submit button, raced a slow start.)"""
    page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length >= {count}", timeout=timeout)
    wait_idle(page, timeout)


def eventually(read, expected, timeout=30.0):
    """Poll `read()` until it returns `expected` (the page shows what the runtime produced a moment
    after the runtime is done); return the last value read, for the test to assert on."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def saved_chat(page, first_message):
    """A past conversation in the list beside the chat (a grid of the saved conversations)."""
    return page.get_by_role("gridcell").filter(has_text=first_message).first


def test_a_reply_streams_into_the_page(chatbot, page):
    module, url = chatbot
    open_chat(page, url)
    assert module.service.engine.label in page.content()
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 120)
    # The page itself records each text the reply shows: sampling it from here missed the whole
    # reply when this process or the browser was slow to get the CPU (the reply is ~1 s alone).
    page.evaluate(RECORD_BOT_TEXTS)
    send(page, "Write three sentences about the ocean.")
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    final = last_bot_text(page)
    assert len(final.split()) >= 8
    partials = {s for s in page.evaluate("window.finchBotTexts") if s and s != final}
    assert len(partials) >= 2, "the reply should appear piece by piece, not all at once"


def test_max_new_tokens_caps_the_reply(chatbot, page):
    module, url = chatbot
    open_chat(page, url)
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 5)
    send(page, "Write a long story about a dragon.")
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    ids = module.service.engine.llm.tokenize(last_bot_text(page).encode(), add_bos=False)
    assert 1 <= len(ids) <= 6


def test_temperature_zero_repeats_itself_exactly_on_retry(chatbot, page, monkeypatch, wait_until_idle):
    module, url = chatbot
    engine = module.service.engine
    calls = []
    real_stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda ids, p, c: (calls.append((ids, p)), real_stream(ids, p, c))[1])
    open_chat(page, url)
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 40)
    send(page, "Give me one tip for learning a language.")
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    first = last_bot_text(page)
    page.get_by_label("Retry").click()
    assert eventually(lambda: len(calls), 2) == 2  # the retry reached the model...
    wait_until_idle(module.service, 60)  # ...and its reply is done
    wait_idle(page)
    assert page.locator(BOT).count() == 1
    assert calls[0] == calls[1] and calls[0][1].temperature == 0
    assert eventually(lambda: last_bot_text(page), first) == first and first.strip()


def test_stop_halts_a_long_reply_and_frees_the_model(chatbot, page, wait_until_idle):
    module, url = chatbot
    open_chat(page, url)
    set_setting(page, "Temperature", 1)
    set_setting(page, "Max new tokens", 2000)
    send(page, "Write a very long story about a dragon and a knight, with many chapters.")
    page.locator(BOT).first.wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=bot]')?.innerText.length > 40")
    page.locator("button.stop-button").click()
    elapsed = wait_until_idle(module.service)
    assert module.service.active == 0 and elapsed < 1.0
    wait_idle(page, timeout=5000)
    text = last_bot_text(page)
    page.wait_for_timeout(1000)
    assert last_bot_text(page) == text, "no more text after Stop"
    # The model is free: the next message is answered at once.
    set_setting(page, "Max new tokens", 8)
    send(page, "Hi!")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 2")
    wait_idle(page, timeout=20_000)


def test_undo_and_clear(chatbot, page):
    _, url = chatbot
    open_chat(page, url)
    set_setting(page, "Max new tokens", 8)
    for count, text in enumerate(("Hello!", "How are you?"), start=1):
        send(page, text)
        wait_replies(page, count)
    assert page.locator(BOT).count() == 2
    page.get_by_label("Undo").last.click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 1")
    page.get_by_label("Clear").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 0")


def test_an_example_prompt_is_answered_and_an_edited_message_is_answered_anew(
    chatbot, page, wait_until_idle, monkeypatch
):
    module, url = chatbot
    engine = module.service.engine
    calls = []
    real_stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda ids, p, c: (calls.append(ids), real_stream(ids, p, c))[1])
    open_chat(page, url)
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 24)
    page.get_by_label(f"Select example 1: {module.EXAMPLES[0]}").click()
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    assert page.locator("[data-testid=user]").first.inner_text().strip() == module.EXAMPLES[0]
    assert "Paris" in last_bot_text(page)
    # Editing the question replaces it, and the reply is generated again for the new text.
    page.get_by_label("Edit").click()
    page.locator("textarea.edit-textarea").fill("What is the capital of Italy?")
    page.get_by_label("Submit").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=user]')].some(e => e.innerText.includes('Italy'))"
    )
    assert eventually(lambda: len(calls), 2) == 2  # the edited question reached the model...
    wait_until_idle(module.service, 60)  # ...and its reply is done (an edit's reply leaves the submit button showing)
    users = page.locator("[data-testid=user]")
    assert users.count() == 1 and users.first.inner_text().strip() == "What is the capital of Italy?"
    # The new reply is the one this question gets alone, in a fresh chat, with the page's settings.
    from chat_runtime import GenerationParams

    alone = list(
        module.service.reply(
            "What is the capital of Italy?",
            [],
            module.SYSTEM_PROMPT,
            GenerationParams(temperature=0, max_new_tokens=24),
        )
    )[-1].text
    assert page.locator(BOT).count() == 1
    assert eventually(lambda: last_bot_text(page).strip(), alone.strip()) == alone.strip()


def test_a_conversation_longer_than_the_context_is_answered_with_the_system_prompt_kept(chatbot, page, monkeypatch):
    module, url = chatbot
    engine = module.service.engine
    monkeypatch.setattr(engine, "context_tokens", 220)
    prompts = []
    real_stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda ids, p, c: (prompts.append(ids), real_stream(ids, p, c))[1])
    open_chat(page, url)
    set_setting(page, "Temperature", 0)  # opens the settings and waits until they are mounted
    set_setting(page, "Max new tokens", 40)
    system = page.get_by_label("System prompt")
    for _ in range(5):
        system.fill("You are Captain Finch, a pirate.")
        system.blur()  # commit the value before the first message goes out
        page.wait_for_timeout(200)
        if system.input_value() == "You are Captain Finch, a pirate.":
            break
    for i in range(5):
        send(page, f"Tell me fact number {i} about the sea, in one sentence.")
        page.wait_for_function(f"() => document.querySelectorAll('[data-testid=bot]').length == {i + 1}")
        wait_idle(page)
    assert page.get_by_text("oldest").first.is_visible()  # the user is told
    assert last_bot_text(page).strip()
    last_prompt = engine.llm.detokenize(prompts[-1], special=True).decode()
    assert "Captain Finch" in last_prompt and "fact number 4" in last_prompt
    assert "fact number 0" not in last_prompt


def test_bad_input_gets_a_message_not_a_crash(chatbot, page):
    _, url = chatbot
    open_chat(page, url)
    send(page, "x" * 25_000)
    page.get_by_text("the limit is").first.wait_for(timeout=15_000)
    set_setting(page, "Max new tokens", 8)
    send(page, "Hello again!")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=bot]')].some(e => e.innerText.trim())")


def test_a_message_too_long_for_the_context_gets_a_notice_and_the_chat_goes_on(chatbot, page, monkeypatch):
    module, url = chatbot
    monkeypatch.setattr(module.service.engine, "context_tokens", 300)
    open_chat(page, url)
    set_setting(page, "Max new tokens", 8)
    send(page, "word " * 600)
    page.get_by_text(module.NOTICE_TITLE).first.wait_for(timeout=15_000)
    assert page.get_by_text("too long for this model").count() >= 0  # inside the collapsible notice
    send(page, "Hello!")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 2")
    wait_idle(page)
    assert last_bot_text(page).strip()


def test_closing_the_tab_ends_generation_within_a_second(chatbot, browser, wait_until_idle):
    module, url = chatbot
    context = browser.new_context()
    page = context.new_page()
    open_chat(page, url)
    set_setting(page, "Temperature", 1)
    set_setting(page, "Max new tokens", 2000)
    send(page, "Write a very long story about a dragon and a knight, with many chapters.")
    page.wait_for_function("() => document.querySelector('[data-testid=bot]')?.innerText.length > 40")
    assert module.service.active == 1
    context.close()
    elapsed = wait_until_idle(module.service)
    assert module.service.active == 0, "generation went on after the tab closed"
    assert elapsed < 1.0


def test_the_chatbot_answers_through_an_inference_server_and_recovers_when_it_comes_back(
    llama_servers, stream_cut, start_app, page, repo_root
):
    """The unchanged app on the server engine: a reply, a clear notice while the server is down,
    answers again once it is back; the API key never reaches the page or the app's log."""
    key = "finch-test-" + "key-" + "51c0de"
    server = llama_servers(api_key=key).start()
    relay = stream_cut(server.port)  # lets the test break a reply off mid-way, whatever the machine's load
    env = {
        "FINCH_SERVER_URL": relay.url(),
        "FINCH_SERVER_MODEL": server.MODEL,
        "FINCH_SERVER_API_KEY": key,
        "FINCH_CONTEXT_TOKENS": "100000",  # more than the server's 4096, so the server itself refuses a long one
        "FINCH_SYSTEM_ROLE": "fold",  # as for a family without a system role (Gemma 2, Mistral)
    }
    url = start_app(repo_root / "chatbot_app", env)
    open_chat(page, url)
    assert f"{server.MODEL} · inference server" in page.content()
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 30)
    # the page says how the system prompt reaches the model, under the system prompt...
    assert page.get_by_text("the system prompt is put at the start of the first user message").is_visible()
    send(page, "What is the capital of France?")
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    # ...and the model answers that way (the 135M model greets instead of naming Paris with the
    # system prompt in the user's message; the folding itself is tested in test_families)
    assert last_bot_text(page).strip() and "Not answered" not in last_bot_text(page)
    server.stop()
    send(page, "And of Italy?")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 2")
    page.get_by_text("Not answered").first.click(timeout=30_000)  # open the collapsed notice
    page.get_by_text("The inference server is not reachable").first.wait_for(timeout=5_000)
    wait_idle(page)
    server.start()
    send(page, "What is the capital of Italy?")
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 3")
    wait_idle(page)
    assert last_bot_text(page).strip() and "Not answered" not in last_bot_text(page)
    # The server dying mid-reply: the text so far stays, and a notice says what happened.
    # A long reply (the model tells this story to the 400-token limit), and the relay forwards its
    # first 12 streamed events and holds the rest: the reply cannot end by itself before the kill,
    # however busy the machine. (Killing on a page-side cue alone raced the reply's last tokens.)
    set_setting(page, "Max new tokens", 400)
    relay.hold_after(12)
    send(page, "Tell me a long story about a dragon who learns to bake bread.")
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=bot]').length == 4 && "
        "document.querySelectorAll('[data-testid=bot]')[3].innerText.trim().length > 5",
        timeout=60_000,
    )
    partial = page.locator(BOT).nth(3).inner_text().strip()
    server.proc.kill()  # no graceful shutdown: the stream breaks off
    server.proc.wait()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 5", timeout=30_000)
    page.get_by_text("Not answered").nth(1).click(timeout=10_000)
    page.get_by_text("dropped the connection mid-reply").first.wait_for(timeout=5_000)
    assert page.locator(BOT).nth(3).inner_text().strip().startswith(partial)  # the text so far stays
    wait_idle(page)
    relay.release()
    server.start()
    set_setting(page, "Max new tokens", 30)
    # An error from the server itself: a prompt beyond its context (the app was told 100k fits).
    send(page, "a " * 9000)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 6")
    page.get_by_text("Not answered").nth(2).click(timeout=30_000)
    page.get_by_text("The inference server ended the reply early").first.wait_for(timeout=5_000)
    log = (start_app.log_dir / f"app-{url.rsplit(':', 1)[1].strip('/')}.log").read_text()
    assert "not reachable" in log  # the operator sees what happened...
    assert key not in page.content() and key not in log  # ...and nobody sees the key


def test_the_page_refuses_blank_and_huge_messages_and_answers_every_script(chatbot, page):
    _, url = chatbot
    open_chat(page, url)
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 8)
    send(page, "   ")
    page.get_by_text("Type a message first").first.wait_for(timeout=15_000)  # at the box, nothing sent
    send(page, "x" * 100_000)
    page.get_by_text("the limit is 20,000").first.wait_for(timeout=15_000)
    assert page.locator(BOT).count() == 0
    send(page, "Hi \x07\x1b[31m \u202eabc\u202c ನಮಸ್ಕಾರ 👋🏽 مرحبا بك 你好 — say hello back.")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=user]')].some(e => e.innerText.includes('ನಮಸ್ಕಾರ'))"
    )
    wait_replies(page, 1)
    assert page.locator(BOT).count() == 1 and last_bot_text(page).strip()


def test_a_like_and_a_dislike_are_saved_as_preference_rows(chatbot, page):
    import json

    module, url = chatbot
    open_chat(page, url)
    assert "votes and likes are collected" in page.content()
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 12)
    send(page, "Name a fruit.")
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    reply = last_bot_text(page)
    before = module.votes.path.read_text().splitlines() if module.votes.path.exists() else []
    page.get_by_label("Dislike").last.click()
    page.wait_for_function("() => true")
    deadline = time.time() + 10
    while time.time() < deadline and len(
        module.votes.path.read_text().splitlines() if module.votes.path.exists() else []
    ) == len(before):
        time.sleep(0.1)
    row = json.loads(module.votes.path.read_text().splitlines()[-1])
    assert row["kind"] == "dislike" and row["reply"] == reply and row["model"] == module.service.engine.label
    assert row["prompt"][0]["role"] == "system" and row["prompt"][-1] == {"role": "user", "content": "Name a fruit."}
    assert row["settings"]["max_new_tokens"] == 12


def test_past_conversations_stay_in_the_browser_across_a_reload(chatbot, page, wait_until_idle):
    module, url = chatbot
    open_chat(page, url)
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 8)
    question = "Name one colour of the sky."
    send(page, question)
    page.locator(BOT).first.wait_for()
    wait_idle(page)
    wait_until_idle(module.service)
    reply = last_bot_text(page)
    assert reply
    # Gradio saves the conversation in events chained after the reply's end, and lists it beside the
    # chat once saved: reloading before that would lose it, as it would for a user.
    saved_chat(page, question).wait_for()
    page.reload()
    page.locator(CHAT_INPUT).wait_for()
    assert page.locator(BOT).count() == 0  # a reload opens a new chat...
    past = saved_chat(page, question)
    past.wait_for()  # ...and lists the earlier one, kept in this browser's local storage
    past.click()
    page.locator(BOT).first.wait_for()
    assert page.locator("[data-testid=user]").first.inner_text().strip() == question
    assert eventually(lambda: last_bot_text(page), reply) == reply
