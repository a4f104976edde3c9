"""The llama-server engine: llama.cpp's own server, run by the app as its child, on the embedded GGUF.
Several users at once each get the reply they get alone; Stop ends only that user's reply; a server
that dies is started again; it never outlives the app; bad setups are refused with what to do."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from chat_runtime import ChatService, GenerationParams, ModelSpec
from chat_runtime.engines.llama_server import RESTARTED

pytestmark = pytest.mark.e2e

PARAMS = GenerationParams(temperature=0.0, max_new_tokens=48)
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain.",
    "How do bees make honey?",
    "Give me a tip for sleeping well.",
    "What is a comet?",
]


@pytest.fixture(scope="module")
def served(embedded_gguf):
    """A ChatService on the llama-server engine with 4 slots, and each question's reply alone."""
    service = ChatService.from_spec(ModelSpec(engine="llama-server", gguf=str(embedded_gguf)))
    yield service, {q: reply(service, q) for q in QUESTIONS}
    service.engine.server.stop()


def reply(service: ChatService, question: str) -> str:
    *_, last = service.reply(question, [], None, PARAMS)
    return last.text


def busy_slots(engine) -> int:
    """Slots of the server decoding right now (its /slots endpoint)."""
    return sum(slot["is_processing"] for slot in httpx.get(engine.root + "/slots", timeout=5).json())


def test_several_users_at_once_each_get_the_reply_they_get_alone(served):
    service, alone = served
    assert service.max_concurrent == 4 and "4 at once" in service.engine.label
    replies, most = {}, 0
    threads = [threading.Thread(target=lambda q=q: replies.__setitem__(q, reply(service, q))) for q in QUESTIONS]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most = max(most, busy_slots(service.engine))
        time.sleep(0.05)
    assert replies == alone  # 6 users on 4 slots: 4 decoded together, 2 waited in ChatService
    assert most > 1, "the server decoded several replies together"


def test_the_server_answers_as_in_process_at_temperature_zero(served, llamacpp_service):
    """The same GGUF on both llama.cpp paths gives the same greedy reply (without the repetition
    penalty, whose window llama-server also fills with the prompt). With llama.cpp's flash
    attention, which its server turns on by itself, the chatbot's own first example began "La
    femme" instead of "The capital of France is Paris." here."""
    service, _ = served
    system = "You are a helpful, friendly assistant. Answer clearly and briefly."  # the chatbot's
    params = GenerationParams(temperature=0.0, max_new_tokens=32, repetition_penalty=1.0)
    replies = {}
    for question in ["What is the capital of France?", "Write a haiku about the sea.", *QUESTIONS[1:3]]:
        *_, through_server = service.reply(question, [], system, params)
        *_, in_process = llamacpp_service.reply(question, [], system, params)
        assert through_server.text == in_process.text, question
        replies[question] = through_server.text
    assert "Paris" in replies["What is the capital of France?"]


def test_retry_at_temperature_zero_repeats_the_reply_through_the_server(served):
    """Retry of a first turn and of a follow-up gives the same reply, token for token. Before the
    prompt was read whole ahead of each reply, the follow-up here began "There are many more colours"
    and its Retry "This applies to many different types" (a near tie read two ways)."""
    service, _ = served
    params = GenerationParams(temperature=0.0, max_new_tokens=48)  # the default repetition penalty
    system = "You are a helpful assistant."
    history = []
    for message in ["Name three colours.", "Why?"]:
        *_, first = service.reply(message, history, system, params)
        *_, again = service.reply(message, history, system, params)  # Retry
        assert first.text and again.text == first.text, message
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": first.text}]


def test_stop_ends_only_that_users_reply(served):
    service, alone = served
    stopped = service.reply(QUESTIONS[0], [], None, GenerationParams(temperature=0.0, max_new_tokens=400))
    next(stopped)  # the first piece: that user's reply is being decoded
    others = {}
    other = threading.Thread(target=lambda: others.__setitem__("reply", reply(service, QUESTIONS[1])))
    other.start()
    stopped.close()  # the user pressed Stop
    other.join()
    assert others["reply"] == alone[QUESTIONS[1]]
    deadline = time.monotonic() + 30
    while busy_slots(service.engine) and time.monotonic() < deadline:  # the server ended the stopped reply
        time.sleep(0.1)
    assert busy_slots(service.engine) == 0 and service.active == 0


def test_a_server_that_died_is_started_again_on_the_next_reply_with_a_notice(served):
    service, alone = served
    service.engine.server.process.kill()
    service.engine.server.process.wait()
    stream = service.reply(QUESTIONS[2], [], None, PARAMS)
    first = next(stream)
    assert first.notice == RESTARTED  # the app shows it to this user
    *_, last = stream
    assert last.text == alone[QUESTIONS[2]] and service.engine.server.alive()
    again = service.reply(QUESTIONS[2], [], None, PARAMS)
    assert next(again).notice == ""  # only the reply that found it dead
    again.close()


def test_a_new_message_to_a_dead_server_starts_it_again_and_is_answered(served):
    """A message never seen before first asks the server for its token count: a server found dead
    there is started again too, and that reply carries the notice."""
    service, _ = served
    service.engine.server.process.kill()
    service.engine.server.process.wait()
    stream = service.reply("Name a fruit that is red.", [], None, PARAMS)
    assert next(stream).notice == RESTARTED
    *_, last = stream
    assert last.text.strip() and service.engine.server.alive()


def test_a_server_that_dies_while_a_request_is_on_its_way_is_started_again(served):
    """The request reaches the server, which then dies before answering (SIGSTOP holds it, SIGKILL
    ends it, as the kernel's out-of-memory killer would): the request failed before the app saw the
    process end, so it is started again and the request sent once more, with the notice."""
    service, alone = served
    pid = service.engine.server.process.pid
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    stream = service.reply(QUESTIONS[3], [], None, PARAMS)
    assert next(stream).notice == RESTARTED
    *_, last = stream
    assert last.text == alone[QUESTIONS[3]] and service.engine.server.process.pid != pid


def test_the_server_ends_with_the_app_even_when_the_app_is_killed(embedded_gguf, repo_root):
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from chat_runtime import ChatService, ModelSpec; "
            "s = ChatService.from_spec(ModelSpec(engine='llama-server', gguf=sys.argv[1])); "
            "print(s.engine.server.process.pid, flush=True); time.sleep(600)",
            str(embedded_gguf),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo_root,
    )
    server_pid = int(app.stdout.readline())
    app.send_signal(signal.SIGKILL)
    app.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _running(server_pid):
        time.sleep(0.1)
    assert not _running(server_pid), "llama-server outlived the app"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie has ended; it waits for its reaper
    except FileNotFoundError:
        return False


def test_a_missing_llama_server_is_refused_with_what_to_do(embedded_gguf, monkeypatch, tmp_path):
    monkeypatch.setenv("FINCH_LLAMA_SERVER", str(tmp_path / "llama-server"))
    with pytest.raises(ValueError, match="scripts/setup.sh. builds it.*FINCH_ENGINE=llamacpp"):
        ChatService.from_spec(ModelSpec(engine="llama-server", gguf=str(embedded_gguf)))


def test_a_gguf_the_server_cannot_load_is_refused_with_its_own_words(embedded_gguf, tmp_path):
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(embedded_gguf.read_bytes()[: 4 << 20])  # a download cut short: a real header, no tensors
    with pytest.raises(ValueError, match="could not load the GGUF: the file may be truncated or corrupt") as refused:
        ChatService.from_spec(ModelSpec(engine="llama-server", gguf=str(broken)))
    assert "failed to load model" in str(refused.value)  # the server's own last lines say why
