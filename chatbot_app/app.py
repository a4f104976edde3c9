"""Chatbot Space: chat with a fine-tuned instruct model, streaming, with sampling sliders.

    python chatbot_app/app.py                                   # embedded SmolLM2 GGUF, CPU
    FINCH_ADAPTER=you/your-adapter python chatbot_app/app.py    # base + LoRA (transformers)

The model comes from FINCH_* environment variables (see chat_runtime/spec.py). UI only: loading,
templating, trimming, validation and cancellation live in the shared runtime `chat_runtime`.
"""

from __future__ import annotations

import gradio as gr

from chat_runtime import DEFAULTS, RANGES, ChatService, limits, validate
from chat_runtime.serving import server_name, server_port

SYSTEM_PROMPT = "You are a helpful, friendly assistant. Answer clearly and briefly."
NOTICE_TITLE = "⚠️ Not answered"
EXAMPLES = [
    "What is the capital of France?",
    "Give me three tips for learning a new language.",
    "Write a haiku about the sea.",
    "Explain what a LoRA adapter is in one paragraph.",
]

service = ChatService.from_spec()


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
    if first.dropped_messages:
        gr.Warning(f"The conversation is longer than the model's context: the {first.dropped_messages} oldest "
                   "messages were left out of this reply (the system prompt is kept).")
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


with gr.Blocks(title="Finch chatbot", fill_height=True) as demo:
    gr.Markdown(f"## Finch chatbot\nModel: **{service.engine.label}**")
    gr.ChatInterface(
        respond,
        textbox=api_raw(gr.Textbox(placeholder="Type a message...", elem_id="chat-input", submit_btn=True,
                                   stop_btn=True, autofocus=True, scale=7, render=False),
                        lambda payload: "" if payload is None else str(payload)),
        additional_inputs=[
            gr.Textbox(SYSTEM_PROMPT, label="System prompt", lines=2, info=service.system_note, render=False),
            _slider("temperature", "Temperature", 0.05, "0 = deterministic; higher = more varied"),
            _slider("top_p", "Top-p", 0.05, "sample from the smallest set of tokens with this much probability"),
            _slider("max_new_tokens", "Max new tokens", 1, "longest reply, in tokens"),
            _slider("repetition_penalty", "Repetition penalty", 0.05, "1 = off; higher discourages repeats"),
        ],
        additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
        fill_height=True,
        examples=[[e] for e in EXAMPLES],
        editable=True,
        validator=check_message,
        api_name="chat",
        concurrency_limit=limits.MAX_CONCURRENT_GENERATIONS,
    )

if __name__ == "__main__":
    demo.queue(max_size=limits.QUEUE_SIZE).launch(server_name=server_name(), server_port=server_port())
