"""Chatbot Space: chat with a fine-tuned instruct model, streaming, with sampling sliders.

    python chatbot_app/app.py                                   # embedded SmolLM2 GGUF, CPU
    FINCH_ADAPTER=you/your-adapter python chatbot_app/app.py    # base + LoRA (transformers)
    FINCH_ADAPTER=you/your-adapter FINCH_COMPARE=base python chatbot_app/app.py   # side by side with its base

The model comes from FINCH_* environment variables (see chat_runtime/spec.py). UI only: loading,
templating, trimming, validation and cancellation live in the shared runtime `chat_runtime`.
"""

from __future__ import annotations

import gradio as gr

from chat_runtime import DEFAULTS, RANGES, ChatService, from_env, limits, validate
from chat_runtime.compare import services_from_env, stream_pair
from chat_runtime.serving import server_name, server_port
from chat_runtime.votes import VoteStore, compare_row, like_row, liked_turn

SYSTEM_PROMPT = "You are a helpful, friendly assistant. Answer clearly and briefly."
NOTICE_TITLE = "⚠️ Not answered"
EXAMPLES = [
    "What is the capital of France?",
    "Give me three tips for learning a new language.",
    "Write a haiku about the sea.",
    "Explain what a LoRA adapter is in one paragraph.",
]

spec = from_env()
service = ChatService.from_spec(spec)
compare = services_from_env(service, spec)  # FINCH_COMPARE: two models side by side
votes = VoteStore.from_env()


def check_message(message, *_settings):
    """Refuse an empty or oversized message before it leaves the textbox, so it can be edited."""
    try:
        service.check_message(message)
        return gr.validate(True, "")
    except ValueError as err:
        return gr.validate(False, str(err))


def notice(err: Exception) -> gr.ChatMessage:
    # Shown as a notice in the chat, not sent back to the model (the runtime skips titled
    # messages); gr.Error here would leave the page's textbox disabled.
    return gr.ChatMessage(content=str(err), metadata={"title": NOTICE_TITLE, "status": "done"})


def respond(message, history, system_prompt, temperature, top_p, max_new_tokens, repetition_penalty):
    """Stream the reply; a bad input becomes a message on the page, never a crash."""
    try:
        params = validate(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
        )
        stream = service.reply(message, history, system_prompt, params)
        first = next(stream)
    except ValueError as err:
        yield notice(err)
        return
    if first.notice:
        gr.Warning(first.notice)
    if first.dropped_messages:
        gr.Warning(
            f"The conversation is longer than the model's context: the {first.dropped_messages} oldest "
            "messages were left out of this reply (the system prompt is kept)."
        )
    text = ""
    try:
        for reply in stream:
            text = reply.text
            yield text
    except ValueError as err:  # the engine failed mid-reply (an inference server that went away)
        yield [text, notice(err)] if text else notice(err)
    finally:
        stream.close()  # Stop or a closed tab lands here: the runtime cancels generation


def api_raw(component, convert=lambda payload: payload):
    """Let an API caller's raw value through to the runtime's `validate`, whose notice names the
    setting and its range. Gradio's own slider check says only "Value 5 is greater than maximum value
    2.0", fails with a bare "Error" on None or text, and a message of None breaks inside ChatInterface.
    (A component subclass would do the same, but Gradio then writes an app.pyi beside app.py.)"""
    component.preprocess = convert
    return component


def _slider(name: str, label: str, step: float, info: str) -> gr.Slider:
    low, high = RANGES[name]
    return api_raw(gr.Slider(low, high, value=getattr(DEFAULTS, name), step=step, label=label, info=info, render=False))


def settings_inputs() -> list:
    return [
        gr.Textbox(SYSTEM_PROMPT, label="System prompt", lines=2, info=service.system_note, render=False),
        _slider("temperature", "Temperature", 0.05, "0 = deterministic; higher = more varied"),
        _slider("top_p", "Top-p", 0.05, "sample from the smallest set of tokens with this much probability"),
        _slider("max_new_tokens", "Max new tokens", 1, "longest reply, in tokens"),
        _slider("repetition_penalty", "Repetition penalty", 0.05, "1 = off; higher discourages repeats"),
    ]


def settings_of(temperature, top_p, max_new_tokens, repetition_penalty):
    return validate(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty
    )


def on_like(data: gr.LikeData, history, system_prompt, *settings):
    """Gradio's own like/dislike on a reply, saved as a preference row."""
    if not isinstance(data.liked, bool):
        return  # a like taken back: nothing to record
    try:
        prompt, reply = liked_turn(history, data.index if isinstance(data.index, int) else data.index[0], system_prompt)
        votes.add(like_row(prompt, reply, service.engine.label, data.liked, settings_of(*settings)))
    except ValueError as err:
        gr.Warning(f"That vote was not saved: {err}")


def chat_page() -> gr.Blocks:
    with gr.Blocks(title="Finch chatbot", fill_height=True) as page:
        gr.Markdown(f"## Finch chatbot\nModel: **{service.engine.label}**\n\n{votes.notice}")
        chatbot = gr.Chatbot(elem_id="chatbot", scale=1, render=False)
        inputs = settings_inputs()
        gr.ChatInterface(
            respond,
            chatbot=chatbot,
            textbox=api_raw(
                gr.Textbox(
                    placeholder="Type a message...",
                    elem_id="chat-input",
                    submit_btn=True,
                    stop_btn=True,
                    autofocus=True,
                    scale=7,
                    render=False,
                ),
                lambda payload: "" if payload is None else str(payload),
            ),
            additional_inputs=inputs,
            additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
            fill_height=True,
            examples=[[e] for e in EXAMPLES],
            editable=True,
            validator=check_message,
            api_name="chat",
            concurrency_limit=service.max_concurrent,
            save_history=True,  # past conversations stay in the user's browser (localStorage), listed beside the chat
        )
        chatbot.like(on_like, [chatbot, *inputs], None, api_name=False)
    return page


def side_view(message: str, side) -> list:
    """One side's chat: the prompt, the reply so far, and that side's notice if it failed."""
    turns = [{"role": "user", "content": message}]
    if side.text:
        turns.append({"role": "assistant", "content": side.text})
    if side.error:
        turns.append(notice(ValueError(side.error)))
    return turns


def respond_pair(message, system_prompt, *settings):
    """Stream both models' replies; the vote buttons open once both are done."""
    locked = [gr.update(interactive=False)] * 3
    try:
        params = settings_of(*settings)
        prompt = service.build_messages(message, [], system_prompt)
    except ValueError as err:
        yield [notice(err)], [notice(err)], None, *locked
        return
    for pair in stream_pair(compare, message, system_prompt, params):
        yield side_view(message, pair.left), side_view(message, pair.right), None, *locked
    done = {
        "prompt": prompt,
        "left": (compare["left"].engine.label, pair.left.text),
        "right": (compare["right"].engine.label, pair.right.text),
        "params": params,
    }
    yield side_view(message, pair.left), side_view(message, pair.right), done, *[gr.update(interactive=True)] * 3


def vote(choice: str):
    def record(done):
        if done:
            votes.add(compare_row(done["prompt"], done["left"], done["right"], choice, done["params"]))
            gr.Info("Thanks: your vote is saved.")
        return None, *[gr.update(interactive=False)] * 3

    return record


def compare_page() -> gr.Blocks:
    with gr.Blocks(title="Finch chatbot: compare", fill_height=True) as page:
        gr.Markdown(
            "## Finch chatbot: which answer is better?\nBoth models answer each prompt on its own, with the "
            f"same settings.\n\n{votes.notice}"
        )
        with gr.Row():
            left = gr.Chatbot(label=f"Left: {compare['left'].engine.label}", elem_id="left-chat", height=420)
            right = gr.Chatbot(label=f"Right: {compare['right'].engine.label}", elem_id="right-chat", height=420)
        with gr.Row():
            box = gr.Textbox(placeholder="Type a prompt...", elem_id="compare-input", show_label=False, scale=6)
            send = gr.Button("Send", variant="primary", elem_id="compare-send", scale=1)
            stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", scale=1)
        with gr.Row():
            buttons = [
                gr.Button(text, interactive=False, elem_id=f"vote-{choice}")
                for choice, text in (("left", "👈 Left is better"), ("tie", "🤝 Tie"), ("right", "Right is better 👉"))
            ]
        with gr.Accordion("Generation settings", open=False):
            inputs = [component.render() for component in settings_inputs()]
        done = gr.State(None)
        outputs = [left, right, done, *buttons]
        events = [
            trigger(
                respond_pair,
                [box, *inputs],
                outputs,
                api_name=name,
                concurrency_limit=service.max_concurrent,
            )
            for trigger, name in ((send.click, "compare"), (box.submit, False))
        ]
        stop.click(None, None, None, cancels=events)
        for button, choice in zip(buttons, ("left", "tie", "right")):
            button.click(vote(choice), [done], [done, *buttons], api_name=False)
    return page


demo = compare_page() if compare else chat_page()

if __name__ == "__main__":
    demo.queue(max_size=limits.QUEUE_SIZE).launch(server_name=server_name(), server_port=server_port())
