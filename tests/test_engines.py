"""Both engines on the embedded model: same prompt ids as the tokenizer, real decoding, EOS, caps."""

import subprocess
import sys
import threading
import time

import pytest
from transformers import AutoTokenizer

from chat_runtime import GenerationParams

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "ನಮಸ್ಕಾರ! And 3 + 3? 🙂"},
]
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=48, repetition_penalty=1.0)


def test_quantized_gguf_decodes_in_a_fresh_process_the_same_batched_as_token_by_token(embedded_gguf, repo_root):
    """A llama.cpp built with gcc's AMX miscompile dies with SIGSEGV on the first decode of a quantized
    GGUF, and one whose AVX2 kernels are wrong on this CPU answers nonsense to a batched prompt: the
    build check setup runs, in a child, so a bad build fails this test instead of the test run."""
    check = repo_root / "scripts" / "check_llama_build.py"
    proc = subprocess.run([sys.executable, str(check), str(embedded_gguf)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"llama.cpp decodes the Q4_1 GGUF wrongly on this CPU (exit {proc.returncode}): rebuild it with "
        f"`rm -rf ~/.cache/finch/wheels && bash scripts/setup.sh`.\n{proc.stderr[-2000:]}"
    )
    assert "the same in one batch as token by token" in proc.stdout


@pytest.mark.parametrize("service_name", ["llamacpp_service", "transformers_service"])
def test_prompt_ids_match_the_hf_tokenizers_chat_template(request, service_name, embedded_hf):
    engine = request.getfixturevalue(service_name).engine
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    expected = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert engine.encode_chat(CONVERSATION) == list(expected)


@pytest.mark.parametrize("service_name", ["llamacpp_service", "transformers_service"])
def test_greedy_reply_is_sensible_repeatable_and_ends_with_eos(request, service_name, embedded_hf):
    engine = request.getfixturevalue(service_name).engine
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    ids = engine.encode_chat(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    )
    params = GenerationParams(temperature=0.0, max_new_tokens=300, repetition_penalty=1.0)
    first = "".join(engine.stream(ids, params, threading.Event()))
    second = "".join(engine.stream(ids, params, threading.Event()))
    assert first == second
    assert "Paris" in first
    # pad == eos on this model: the reply must still stop on its own (EOS), well before the cap.
    assert len(tokenizer(first, add_special_tokens=False)["input_ids"]) < 250


@pytest.mark.parametrize("service_name", ["llamacpp_service", "transformers_service"])
def test_max_new_tokens_caps_the_reply(request, service_name, embedded_hf):
    engine = request.getfixturevalue(service_name).engine
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    ids = engine.encode_chat([{"role": "user", "content": "Write a long story about a dragon."}])
    text = "".join(engine.stream(ids, GenerationParams(temperature=0.0, max_new_tokens=5), threading.Event()))
    assert 1 <= len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 6  # re-tokenizing may split one


@pytest.mark.parametrize("service_name", ["llamacpp_service", "transformers_service"])
def test_cancel_stops_generation_within_a_second(request, service_name):
    engine = request.getfixturevalue(service_name).engine
    ids = engine.encode_chat([{"role": "user", "content": "Write a very long story about a dragon."}])
    cancel = threading.Event()
    params = GenerationParams(temperature=1.0, max_new_tokens=2000)
    pieces = []
    stream = engine.stream(ids, params, cancel)
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 5:
            cancel.set()
            started = time.monotonic()
    rest = list(stream)
    assert time.monotonic() - started < 1.0
    assert len(pieces) <= 7 and not rest


def test_an_adapter_loads_with_its_base_read_from_its_own_config(tmp_path, embedded_hf, transformers_service):
    """What a Space does with only FINCH_ADAPTER set: find the base, load base + LoRA, answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chat_runtime import ChatService, ModelSpec

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_hf)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    service = ChatService.from_spec(ModelSpec(adapter=str(tmp_path / "adapter")))
    assert f"+ adapter {tmp_path / 'adapter'}" in service.engine.label
    assert type(service.engine.model).__name__.startswith("Peft")
    question = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi!"}]
    ids = service.engine.encode_chat(question)
    assert ids == transformers_service.engine.encode_chat(question)
    with_adapter = "".join(service.engine.stream(ids, GREEDY, threading.Event()))
    without = "".join(transformers_service.engine.stream(ids, GREEDY, threading.Event()))
    assert with_adapter and with_adapter != without  # the (random) adapter really is applied


def test_a_follow_up_evaluates_only_what_is_new_and_retry_repeats_exactly(llamacpp_service):
    import llama_cpp

    engine = llamacpp_service.engine
    params = GenerationParams(temperature=0.0, max_new_tokens=12)

    def reply(messages) -> tuple[str, int]:
        """The reply, and how many prompt tokens llama.cpp evaluated for it."""
        before = llama_cpp.llama_perf_context(engine.llm._ctx.ctx).n_p_eval
        text = "".join(engine.stream(engine.encode_chat(messages), params, threading.Event()))
        return text, llama_cpp.llama_perf_context(engine.llm._ctx.ctx).n_p_eval - before

    chat = CONVERSATION[:2]
    first, _ = reply(chat)
    chat = [*chat, {"role": "assistant", "content": first}, {"role": "user", "content": "Now say it in words."}]
    follow_up, evaluated = reply(chat)
    # The cached conversation is kept: only the end of the last reply and the new message are read.
    assert evaluated < len(engine.encode_chat(chat)) - len(engine.encode_chat(CONVERSATION[:2]))
    assert reply(chat)[0] == follow_up  # Retry: the same reply, token for token


def test_a_portable_llama_cpp_never_loads_amx_code_nor_avx2_code_where_it_computed_wrongly():
    """Which of a portable build's CPU variants may load (tests/test_deploy.py loads one from a real
    portable install); setup.sh's build for this CPU has none, and nothing is loaded."""
    from chat_runtime.engines.cpu_variants import allowed, load_cpu_variant

    built = ["x64", "sse42", "sandybridge", "ivybridge", "haswell", "skylakex", "icelake", "zen4", "alderlake"]
    built.append("sapphirerapids")
    zen4 = {"sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert allowed(built, zen4) == built[:-1]
    assert allowed(built, zen4 | {"amx_tile", "amx_int8", "amx_bf16"}) == built[:-1]  # gcc 12's AMX miscompile
    assert allowed(built, {"avx2", "avx_vnni"}) == built[:-1]  # Alder Lake: VNNI without AVX-512
    assert allowed(built, {"sse4_2", "avx", "f16c", "fma", "avx2"}) == built[:4]  # Zen 3: AVX2 without VNNI
    assert load_cpu_variant() is None
