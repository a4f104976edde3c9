"""gguf/chat.py driven through a pseudo-terminal, as a person uses it: streaming replies, /reset,
Ctrl-C and Ctrl-D without a traceback, and one clear line for a broken GGUF."""

from __future__ import annotations

import subprocess
import sys
import time

import pexpect
import pytest

from chat_runtime import GenerationParams
from gguf_export.repl import ChatSession

PROMPT = "you> "


def spawn(repo_root, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        [str(repo_root / "gguf" / "chat.py"), *args],
        cwd=str(repo_root),
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    child.expect_exact(PROMPT)
    return child


def read_reply(child: pexpect.spawn) -> tuple[str, list[float]]:
    """The reply's text up to the next prompt, and when each piece of it arrived."""
    text, times = "", []
    while not text.endswith(PROMPT):
        try:
            piece = child.read_nonblocking(size=1000, timeout=120)
        except pexpect.TIMEOUT:
            raise AssertionError(f"no prompt after the reply; got {text!r}") from None
        text += piece
        times.append(time.monotonic())
    return text[: -len(PROMPT)], times


@pytest.mark.e2e
def test_chat_streams_replies_resets_and_leaves_on_ctrl_d(repo_root):
    child = spawn(
        repo_root, "--temperature", "0", "--max_new_tokens", "64", "--system_prompt", "You are a helpful assistant."
    )
    assert "SmolLM2-135M-Instruct.Q4_1.gguf · llama.cpp · CPU" in child.before
    child.sendline("What is the capital of France?")
    child.expect_exact("bot> ")
    reply, times = read_reply(child)
    assert "Paris" in reply
    assert len(times) >= 3 and times[-1] - times[0] > 0.05, f"the reply came in one piece: {times}"  # streamed

    child.sendline("/reset")
    child.expect_exact("(new conversation)")
    child.expect_exact(PROMPT)
    child.sendline("Say hello.")
    child.expect_exact("bot> ")
    assert read_reply(child)[0].strip()

    child.sendeof()  # Ctrl-D at the prompt
    child.expect_exact("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


@pytest.mark.e2e
def test_ctrl_c_stops_a_reply_then_leaves_at_the_prompt(repo_root):
    child = spawn(repo_root, "--temperature", "0", "--max_new_tokens", "1000", "--repetition_penalty", "1.0")
    child.sendline("Write a very long story about a dragon, with many chapters.")
    child.expect_exact("bot> ")
    child.read_nonblocking(size=20, timeout=60)  # the reply has started
    child.sendintr()  # Ctrl-C while it streams
    child.expect_exact("[stopped]", timeout=30)
    child.expect_exact(PROMPT)
    child.sendintr()  # Ctrl-C at the prompt
    child.expect_exact("bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before and "KeyboardInterrupt" not in child.before


def test_broken_gguf_is_one_clear_line(repo_root, tmp_path, embedded_gguf):
    truncated = tmp_path / "model.gguf"
    truncated.write_bytes(embedded_gguf.read_bytes()[:5_000_000])
    cases = {
        str(truncated): "truncated or corrupt",
        str(tmp_path / "absent.gguf"): "not found",
    }
    for path, expected in cases.items():
        proc = subprocess.run(
            [sys.executable, str(repo_root / "gguf" / "chat.py"), "--gguf", path],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 2
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_reset_forgets_the_conversation(llamacpp_service):
    """After /reset the next prompt is exactly a fresh conversation's (system prompt kept)."""
    session = ChatSession(llamacpp_service, GenerationParams(temperature=0.0, max_new_tokens=8), "Be brief.")
    pieces: list[str] = []
    first = session.reply("Hi!", pieces.append)
    assert first == "".join(pieces) and session.history[-1] == {"role": "assistant", "content": first}
    session.reset()
    assert session.history == []
    fresh = ChatSession(llamacpp_service, session.params, "Be brief.")
    assert session.reply("Hi!", lambda _: None) == fresh.reply("Hi!", lambda _: None)


def test_ctrl_c_keeps_what_was_said(llamacpp_service):
    """A KeyboardInterrupt mid-reply ends it, frees the engine, and the history holds the partial reply."""
    session = ChatSession(llamacpp_service, GenerationParams(temperature=0.0, max_new_tokens=200))
    seen: list[str] = []

    def write(text: str) -> None:
        seen.append(text)
        if len(seen) == 4:
            raise KeyboardInterrupt

    partial = session.reply("Tell me a long story.", write)
    assert seen[-1] == " [stopped]" and partial == "".join(seen[:3]) and partial
    assert session.history[-1] == {"role": "assistant", "content": partial}
    assert llamacpp_service.active == 0  # the generation was closed, the engine is free
