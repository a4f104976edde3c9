"""Storymaker Space: a choose-your-own-adventure told by a fine-tuned instruct model.

    python storymaker_app/app.py                                   # embedded SmolLM2 GGUF, CPU
    FINCH_ADAPTER=you/your-adapter python storymaker_app/app.py    # base + LoRA (transformers)
    FINCH_ADAPTER=runs/cpu-smollm2-story/adapter python storymaker_app/app.py   # the storyteller recipe

The model comes from FINCH_* environment variables (see chat_runtime/spec.py); the narrator's
instructions from system_prompt.md beside this file. UI only: the story logic (the opening request,
the turn shape each engine is held to while decoding, the scene streamed before its choices, the
counted fallbacks, the Markdown export) lives in chat_runtime.story, and loading, templating,
trimming and cancellation in chat_runtime.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import gradio as gr

from chat_runtime import DEFAULTS, RANGES, ChatService, limits, validate
from chat_runtime.serving import server_name, server_port
from chat_runtime.story import (
    GENRES,
    MAX_CHOICES,
    TONES,
    Story,
    StoryTeller,
    escape_markdown,
    file_name,
    heading,
    to_markdown,
    transcript,
)

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (Path(__file__).with_name("system_prompt.md")).read_text(encoding="utf-8").strip()
SETTINGS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")
NOTICE_TITLE = "⚠️ Not told"
FINDING_CHOICES = "🧭 Finding your choices…"
# A warm, book-like look; Gradio derives the dark variant of every colour from the same hues.
# Soft's dark hover (and so disabled) fill for plain buttons is amber: a disabled Undo would look
# like the call to action, so it stays grey.
THEME = gr.themes.Soft(primary_hue="amber", secondary_hue="teal", neutral_hue="stone").set(
    button_secondary_background_fill_hover_dark="*neutral_600"
)
CSS = "#story .message-content { font-family: Georgia, 'DejaVu Serif', serif; font-size: 1.05rem; line-height: 1.6; }"
DOWNLOADS = Path(tempfile.mkdtemp(prefix="finch-stories-"))  # Gradio serves files from the temp dir

service = ChatService.from_spec()
teller = StoryTeller(service, SYSTEM_PROMPT)


def _notice(text: str, title: str = NOTICE_TITLE, status: str = "done") -> dict:
    # A titled message is shown beside the story, and never sent to the model (the runtime skips it).
    return {"role": "assistant", "content": text, "metadata": {"title": title, "status": status}}


def _save(story: Story) -> str:
    """The story's Markdown in a file named after its title (one folder per content: no clashes)."""
    text = to_markdown(story)
    folder = DOWNLOADS / hashlib.sha256(text.encode()).hexdigest()[:16]
    folder.mkdir(exist_ok=True)
    path = folder / file_name(story)
    path.write_text(text, encoding="utf-8")
    return str(path)


def page(story: Story | None, notice: str | None = None, busy: bool = False, clear_action: bool = False) -> dict:
    """Every part of the page for a story, so the page always matches the state."""
    choices = story.choices if story else ()
    told = bool(story and story.turns)
    updates = {
        state: story,
        heading_md: heading(story) if story else "",
        choices_json: list(choices),
        story_view: transcript(story) + ([_notice(notice)] if notice else []),
        download_btn: _save(story) if told else None,  # a plain value: API callers get the file
        begin_btn: gr.Button(interactive=not busy),
        act_btn: gr.Button(interactive=not busy),
        undo_btn: gr.Button(interactive=told and not busy),
        restart_btn: gr.Button(interactive=bool(story) and not busy),
    }
    for i, button in enumerate(choice_btns):
        visible = i < len(choices) and not busy  # while a turn is told, the old choices are gone
        updates[button] = gr.Button(value=choices[i] if visible else "", visible=visible)
    if clear_action:
        updates[action_box] = ""
    return updates


def tell(story: Story, action: str | None, settings: tuple, before: Story | None):
    """Stream one turn into the page; a bad input or a failure shows a notice and the story `before`."""
    try:
        params = validate(**dict(zip(SETTINGS, settings)))
        updates = teller.tell(story, action, params)
        first = next(updates)
    except ValueError as err:
        yield page(before, notice=str(err))
        return
    if first.notice:
        gr.Warning(first.notice)
    if first.dropped_messages:
        gr.Warning(
            f"The story is longer than the model's context: its {first.dropped_messages // 2} earliest turns "
            "were left out of this one (the narrator's instructions are kept)."
        )
    shown = transcript(story) + ([{"role": "user", "content": escape_markdown(action)}] if action else [])
    yield {**page(story, busy=True), story_view: shown}
    try:
        for progress in updates:
            if progress.turn:
                yield page(story.with_turn(progress.turn), clear_action=action is not None)
                return
            extra = [_notice("", FINDING_CHOICES, "pending")] if progress.finding_choices else []
            yield {story_view: shown + [{"role": "assistant", "content": progress.text}] + extra}
    except Exception as err:  # the page must stay usable: say so, keep the story as it was
        log.exception("a story turn failed")
        reason = str(err) if isinstance(err, ValueError) else type(err).__name__
        yield page(before, notice=f"The narrator stumbled ({reason}); try again.")
    finally:
        updates.close()  # a closed tab lands here: the runtime cancels generation


def begin(title, genre, tone, story, temperature, top_p, max_new_tokens, repetition_penalty):
    """Start a new story from the title, genre and tone."""
    try:
        new = Story.new(title, genre, tone)
    except ValueError as err:
        yield page(story, notice=str(err))
        return
    yield from tell(new, None, (temperature, top_p, max_new_tokens, repetition_penalty), before=story)


def act(action, story, temperature, top_p, max_new_tokens, repetition_penalty):
    """Go on with the player's action: a choice button's text or typed text."""
    if story is None:
        yield page(None, notice="Begin a story first: give it a title and press Begin.")
        return
    yield from tell(story, action, (temperature, top_p, max_new_tokens, repetition_penalty), before=story)


def check_begin(title, *_rest):
    """Refuse an empty title at its box, before anything runs."""
    ok = bool(str(title or "").strip())
    return (gr.validate(ok, "" if ok else "Give your story a title first."),) + tuple(
        gr.validate(True, "") for _ in _rest
    )


def check_action(action, story, *settings):
    """Refuse an action before a story, or an empty one, at its box."""
    message = "" if story is not None else "Begin a story first."
    message = message or ("" if str(action or "").strip() else "Type what you do next, or pick a choice.")
    return (gr.validate(not message, message), gr.validate(True, "")) + tuple(gr.validate(True, "") for _ in settings)


def api_raw(component):
    """Let an API caller's raw value through to the runtime's `validate`, whose notice names the
    setting and its range. Gradio's own slider check says only "Value 5 is greater than maximum value
    2.0", and fails with a bare "Error" on None or text. (A component subclass would do the same,
    but Gradio then writes an app.pyi beside app.py.)"""
    component.preprocess = lambda payload: payload
    return component


def _slider(name: str, label: str, step: float, info: str) -> gr.Slider:
    low, high = RANGES[name]
    return api_raw(gr.Slider(low, high, value=getattr(DEFAULTS, name), step=step, label=label, info=info))


with gr.Blocks(title="Finch storymaker") as demo:
    state = gr.State(None)
    gr.Markdown(
        f"## Finch storymaker\nName an adventure, then choose your path. Model: **{service.engine.label}**. "
        f"{service.system_note}"
    )
    with gr.Row(equal_height=True):
        title_box = gr.Textbox(
            label="Title",
            placeholder="The Lighthouse at the End of the World",
            max_lines=1,
            elem_id="story-title",
            scale=4,
        )
        genre_box = gr.Dropdown(
            list(GENRES), value=GENRES[0], label="Genre", allow_custom_value=True, elem_id="story-genre", scale=2
        )
        tone_box = gr.Dropdown(
            list(TONES), value=TONES[0], label="Tone", allow_custom_value=True, elem_id="story-tone", scale=2
        )
        begin_btn = gr.Button("Begin", variant="primary", elem_id="begin", scale=1)
    heading_md = gr.Markdown(label="Title", elem_id="story-heading")
    choices_json = gr.JSON(label="Choices", visible=False)  # the buttons' labels, for API callers
    story_view = gr.Chatbot(
        label="Your story",
        show_label=False,
        elem_id="story",
        height=440,
        layout="panel",
        feedback_options=None,
        buttons=["copy", "copy_all"],
        placeholder="Your adventure appears here.",
    )
    with gr.Row():
        choice_btns = [
            gr.Button(visible=False, variant="primary", elem_id=f"choice-{i + 1}") for i in range(MAX_CHOICES)
        ]
    with gr.Row(equal_height=True):
        action_box = gr.Textbox(
            label="Action", placeholder="…or type what you do", show_label=False, elem_id="action-input", scale=5
        )
        act_btn = gr.Button("Do it", elem_id="act", scale=1)
    with gr.Row():
        undo_btn = gr.Button("↩ Undo last turn", elem_id="undo", interactive=False)
        restart_btn = gr.Button("⟲ Restart", elem_id="restart", interactive=False)
        download_btn = gr.DownloadButton("⬇ Download story", elem_id="download")
    with gr.Accordion("Generation settings", open=False):
        sliders = [
            _slider("temperature", "Temperature", 0.05, "0 = deterministic; higher = more varied"),
            _slider("top_p", "Top-p", 0.05, "sample from the smallest set of tokens with this much probability"),
            _slider("max_new_tokens", "Max new tokens", 1, "longest scene, in tokens"),
            _slider("repetition_penalty", "Repetition penalty", 0.05, "1 = off; higher discourages repeats"),
        ]

    everything = [
        state,
        heading_md,
        choices_json,
        story_view,
        *choice_btns,
        download_btn,
        action_box,
        begin_btn,
        act_btn,
        undo_btn,
        restart_btn,
    ]
    generating = dict(
        outputs=everything,
        concurrency_id="story",
        concurrency_limit=service.max_concurrent,
        show_progress="minimal",
        show_progress_on=[story_view],
    )
    begin_inputs = [title_box, genre_box, tone_box, state, *sliders]
    begin_btn.click(begin, begin_inputs, validator=check_begin, api_name="begin", **generating)
    title_box.submit(begin, begin_inputs, validator=check_begin, api_visibility="private", **generating)
    act_btn.click(act, [action_box, state, *sliders], validator=check_action, api_name="act", **generating)
    action_box.submit(
        act, [action_box, state, *sliders], validator=check_action, api_visibility="private", **generating
    )
    for button in choice_btns:
        button.click(act, [button, state, *sliders], api_visibility="private", **generating)
    undo_btn.click(lambda story: page(story.undo() if story else None), state, everything, api_name="undo")
    restart_btn.click(lambda: page(None), None, everything, api_name="restart")
    story_view.clear(lambda: page(None), None, everything, api_visibility="private")  # its bin icon: a restart

if __name__ == "__main__":
    demo.queue(max_size=limits.QUEUE_SIZE).launch(
        server_name=server_name(), server_port=server_port(), theme=THEME, css=CSS
    )
