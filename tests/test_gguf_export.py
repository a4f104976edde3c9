"""gguf/export.py on the embedded model: a LoRA trained here is merged, converted by llama.cpp's
own converter, quantized, and each file is loaded by llama-cpp-python and compared, greedy token by
token, with the fine-tuned transformers model; and every error the issue names has a test."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chat_runtime import ChatService, GenerationParams, ModelSpec
from gguf_export import ExportError
from gguf_export.errors import DiskFullError
from gguf_export.files import atomic_output, check_free_space, remove_leftovers
from gguf_export.merge import check_lora_gguf, resolve_adapter
from gguf_export.pipeline import run_export
from gguf_export.quantize import inspect_gguf
from gguf_export.quants import parse_quants

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions
# For the tests whose fixtures train the adapter and export or merge it (the first to ask pays):
# about 3 minutes quiet; over 10 on a machine shared with training.
TRAINS_AND_EXPORTS = pytest.mark.timeout(1500)

QUANTS = ["q8_0", "q4_k_m", "f16"]
# Share of the 8 prompts whose first 32 greedy tokens must equal the fine-tuned transformers
# model's (base + adapter, fp32, unmerged). Measured here: f16 8/8, q8_0 5/8, q4_k_m 2-3/8. Where q8_0
# departs, the reference's two best next tokens were within 0.1-0.2 logits of each other (near ties
# that any rounding flips); Q4_K_M degrades on this 576-wide model (180 of 272 tensors fall back
# from Q4_K, DESIGN section 3). The thresholds leave one prompt of margin. Every quant must keep
# the fine-tune's habit (replies open with "Ahoy!"), which no near tie can flip.
MIN_AGREEMENT = {"f16": 7 / 8, "q8_0": 4 / 8, "q4_k_m": 1 / 8}
MIN_OPENINGS = {"f16": 8, "q8_0": 8, "q4_k_m": 7}
FILE_TYPES = {"f16": "1", "q8_0": "7", "q4_k_m": "15"}  # GGUF general.file_type


def export_cmd(repo_root: Path, *args: str) -> list[str]:
    return [sys.executable, str(repo_root / "gguf" / "export.py"), *args]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, embedded_hf, repo_root):
    """A real LoRA adapter trained on the embedded model, and the fine-tune's greedy replies."""
    folder = tmp_path_factory.mktemp("gguf-adapter")
    cmd = [
        sys.executable,
        str(repo_root / "tests" / "gguf_reference.py"),
        "--base",
        str(embedded_hf),
        "--adapter_out",
        str(folder / "adapter"),
        "--reference_out",
        str(folder / "reference.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "adapter", json.loads((folder / "reference.json").read_text())


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory, repo_root):
    """The entry script run on that adapter: q8_0, q4_k_m and f16, plus the LoRA GGUF."""
    adapter, _ = trained
    out = tmp_path_factory.mktemp("gguf-out")
    proc = subprocess.run(
        export_cmd(
            repo_root,
            "--adapter",
            str(adapter),
            "--name",
            "ahoy",
            "--quant",
            *QUANTS,
            "--lora_gguf",
            "--output_dir",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def greedy_ids(llm, prompt_ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation, EOS included, at most n tokens."""
    out: list[int] = []
    llm.reset()
    for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token == llm.token_eos() or len(out) >= n:
            break
    return out


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_export_writes_each_quant_whole_with_template_and_eos(exported, embedded_hf):
    from transformers import AutoTokenizer

    out, stdout = exported
    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["Modelfile", "README.md", "ahoy-lora-f16.gguf"] + [f"ahoy-{q}.gguf" for q in QUANTS]
    )  # no scratch left
    for quant in QUANTS:
        meta = inspect_gguf(out / f"ahoy-{quant}.gguf")
        assert meta["tokenizer.chat_template"] == tokenizer.chat_template
        assert meta["tokenizer.ggml.eos_token_id"] == str(tokenizer.eos_token_id)
        assert meta["general.file_type"] == FILE_TYPES[quant]
        assert f"ahoy-{quant}.gguf" in stdout  # the summary table
    assert "merge" in stdout and "MB" in stdout


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_quantized_files_agree_with_the_finetuned_transformers_model(exported, trained, capsys):
    from llama_cpp import Llama

    out, _ = exported
    _, reference = trained
    n = reference["new_tokens"]
    rates, openings = {}, {}
    for quant in QUANTS:
        llm = Llama(model_path=str(out / f"ahoy-{quant}.gguf"), n_ctx=512, n_threads=1, verbose=False)
        agree, ahoy = 0, 0
        for ref in reference["outputs"]:
            got = greedy_ids(llm, ref["prompt_ids"], n)
            agree += got[:n] == ref["ids"][:n]
            ahoy += llm.detokenize(got).decode("utf-8", "replace").startswith("Ahoy!")
        llm.close()
        rates[quant], openings[quant] = agree / len(reference["outputs"]), ahoy
    with capsys.disabled():
        print(
            "\nGGUF vs fine-tuned transformers, first 32 greedy tokens equal: "
            + ", ".join(f"{q} {r:.0%}" for q, r in rates.items())
            + "; replies opening with the fine-tune's 'Ahoy!': "
            + ", ".join(f"{q} {n}/8" for q, n in openings.items())
        )
    for quant, count in openings.items():
        assert count >= MIN_OPENINGS[quant], f"{quant}: only {count}/8 replies open with the fine-tune's 'Ahoy!'"
    for quant, rate in rates.items():
        assert rate >= MIN_AGREEMENT[quant], (
            f"{quant}: {rate:.0%} of prompts agree, expected at least {MIN_AGREEMENT[quant]:.0%}"
        )


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_lora_gguf_applies_the_finetune_to_the_base_gguf(exported, trained, embedded_gguf, llamacpp_service):
    out, _ = exported
    _, reference = trained
    tuned = ChatService.from_spec(
        ModelSpec(engine="llamacpp", gguf=str(embedded_gguf), gguf_lora=str(out / "ahoy-lora-f16.gguf"))
    )
    params = GenerationParams(temperature=0.0, max_new_tokens=6, repetition_penalty=1.0)

    def opening(service, question):
        ids = service.engine.encode_chat(
            [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": question}]
        )
        return "".join(service.engine.stream(ids, params, threading.Event()))

    prompts = [r["prompt"] for r in reference["outputs"]][:4]  # a LoRA GGUF decodes at ~40% speed: keep it short
    with_lora = sum(opening(tuned, q).startswith("Ahoy!") for q in prompts)
    without = sum(opening(llamacpp_service, q).startswith("Ahoy!") for q in prompts)
    assert with_lora == len(prompts) and without == 0


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_card_and_modelfile_describe_the_files(exported):
    out, _ = exported
    card = (out / "README.md").read_text()
    for name in ["ahoy-q8_0.gguf", "ahoy-q4_k_m.gguf", "ahoy-f16.gguf", "ahoy-lora-f16.gguf"]:
        assert f"| `{name}` |" in card
    assert "MB |" in card and "gguf/chat.py --gguf" in card and "llama-cli" in card and "ollama create ahoy" in card
    modelfile = (out / "Modelfile").read_text().splitlines()
    assert modelfile[1] == "FROM ./ahoy-q8_0.gguf"
    assert any(line.startswith('TEMPLATE """') and "<|im_start|>" in line for line in modelfile)
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_the_card_reports_fidelity_of_every_file_written(exported):
    card = (exported[0] / "README.md").read_text()
    section = card.split("## Fidelity (`python gguf/verify.py`)", 1)[1]
    hops = [
        line.split(" | ")[0].strip("| ") for line in section.splitlines() if line.startswith("| ") and "---" not in line
    ][1:]
    assert hops == ["peft", "merged", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]  # most to least precise
    assert "| merged | 100% (peft) | 100% |" in section  # a 16-bit merge keeps every greedy reply
    assert "NO: template drift" not in section


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_verify_checks_an_exports_files_and_writes_its_report(exported, trained, repo_root, tmp_path):
    out, _ = exported
    adapter, _ = trained
    report = tmp_path / "verify.json"
    prompts = tmp_path / "prompts.txt"  # three of its own prompts: the export above ran the ten built in
    prompts.write_text("What is the capital of France?\nName a colour.\nGive me one tip for learning a language.\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root / "gguf" / "verify.py"),
            "--adapter",
            str(adapter),
            "--gguf_dir",
            str(out),
            "--quant",
            "q8_0",
            "--prompts_file",
            str(prompts),
            "--max_new_tokens",
            "40",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: most replies ran past 40 tokens (said on stderr)
    assert "| gguf-q8_0 |" in proc.stdout and "agree with the previous hop" in proc.stdout
    data = json.loads(report.read_text())
    assert [h["name"] for h in data["hops"]] == ["peft", "merged", "gguf-q8_0"]
    assert all(h["texts"][0].startswith("Ahoy!") for h in data["hops"])  # the fine-tune survives every hop
    ended = data["hops"][0]["ended"]
    assert (proc.returncode == 1) == (sum(ended) * 2 < len(ended))
    assert ("did not end within 40 tokens" in proc.stderr) == (not all(ended))
    missing = subprocess.run(
        [
            sys.executable,
            str(repo_root / "gguf" / "verify.py"),
            "--adapter",
            str(adapter),
            "--gguf_dir",
            str(tmp_path),
            "--quant",
            "q8_0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        missing.returncode == 2
        and "expected one *-q8_0.gguf in" in missing.stderr
        and "Traceback" not in missing.stderr
    )


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_push_to_hub_fails_cleanly_offline_and_never_shows_the_token(exported, repo_root):
    out, _ = exported
    token = "hf_" + "finchTestSecret" + "0123456789abcdef"  # fake, split so no scanner takes it for real
    code = (
        "import sys, pathlib; from gguf_export.hub import push; from gguf_export import ExportError\n"
        f"folder = pathlib.Path({str(out)!r})\n"
        "try:\n    push(folder, sorted(folder.iterdir()), 'finch-tests/ahoy-GGUF', private=True)\n"
        "except ExportError as err:\n    print(err); sys.exit(2)\n"
    )
    env = {**os.environ, "HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "Uploading to finch-tests/ahoy-GGUF failed" in proc.stdout and "hf upload finch-tests/ahoy-GGUF" in proc.stdout
    )
    assert token not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# Errors: each says what went wrong and what to do, and leaves nothing at the final path.


def test_unknown_quant_is_refused_before_any_work(repo_root, tmp_path):
    with pytest.raises(
        ExportError, match=r"unknown quantization 'q3_k': choose from q4_k_m \(default\), q5_k_m, q8_0, f16"
    ):
        parse_quants(["q8_0", "q3_k"])
    assert parse_quants(["Q8_0,q4_k_m", "q8_0"]) == ["q8_0", "q4_k_m"]
    out = tmp_path / "out"
    proc = subprocess.run(
        export_cmd(repo_root, "--model", "/nowhere", "--quant", "q3_k", "--output_dir", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown quantization 'q3_k'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def _adapter(folder: Path, base: str, **config) -> Path:
    """An adapter folder as peft writes it, with a chosen base and LoRA settings (no weights needed)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "base_model_name_or_path": base,
                "r": 8,
                "lora_alpha": 16,
                "target_modules": ["q_proj", "v_proj"],
                **config,
            }
        )
    )
    return folder


def test_adapter_whose_base_cannot_be_found(tmp_path):
    missing_folder = _adapter(tmp_path / "a", "/models/gone/SmolLM2")
    with pytest.raises(
        ExportError,
        match=r"base model '/models/gone/SmolLM2' of adapter .* can't be found: there is no such folder.*--model DIR",
    ):
        resolve_adapter(str(missing_folder), None)
    offline_hub = _adapter(tmp_path / "b", "finch-tests/no-such-base")
    with pytest.raises(
        ExportError,
        match=r"'finch-tests/no-such-base' of adapter .* can't be found: not a local folder, and the Hub .*--model DIR",
    ):
        resolve_adapter(str(offline_hub), None)


def test_lora_gguf_refuses_adapters_that_train_embeddings_or_head(tmp_path, embedded_hf):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(embedded_hf)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], modules_to_save=["embed_tokens"])
    )
    peft_model.save_pretrained(tmp_path / "real")
    with pytest.raises(ExportError, match=r"it trains embed_tokens and lm_head.*llama.cpp#11554.*Drop --lora_gguf"):
        check_lora_gguf(tmp_path / "real")
    # Refused before any work: the pipeline stops before merging or converting.
    only_config = _adapter(tmp_path / "cfg", str(embedded_hf), target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(ExportError, match="modules_to_save"):
        run_export(
            adapter=str(only_config),
            model=None,
            output_dir=tmp_path / "out",
            name=None,
            quants=["q8_0"],
            lora_gguf=True,
            cache=tmp_path / "cache",
        )
    assert not (tmp_path / "out").exists()
    check_lora_gguf(_adapter(tmp_path / "fine", str(embedded_hf)))  # plain attention LoRA: accepted


def test_unsupported_architecture_surfaces_the_converters_error(tmp_path):
    from chat_runtime.embedded import cache_dir

    model = tmp_path / "toy"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"architectures": ["FinchToyForCausalLM"], "model_type": "finch_toy"})
    )
    with pytest.raises(ExportError) as info:
        run_export(
            adapter=None, model=str(model), output_dir=tmp_path / "out", name=None, quants=["q8_0"], cache=cache_dir()
        )
    message = str(info.value)
    assert "\n" not in message
    assert "Model FinchToyForCausalLM is not supported" in message and "--llama_cpp_dir" in message
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no file, no scratch folder


def test_truncated_or_corrupt_gguf_is_refused_with_a_clear_message(tmp_path, embedded_gguf):
    data = embedded_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"\0" * 64 + data[64:4096])
    for path in (truncated, corrupt):
        with pytest.raises(ExportError, match="not a usable GGUF"):
            inspect_gguf(path)
        with pytest.raises(ValueError, match="truncated or corrupt|not a GGUF file"):
            ChatService.from_spec(ModelSpec(gguf=str(path)))


def test_a_full_disk_leaves_no_half_file(tmp_path):
    final = tmp_path / "model-q8_0.gguf"
    with pytest.raises(
        DiskFullError, match=r"No space left on the disk of .* is free.*nothing was left at the final path"
    ):
        with atomic_output(final) as tmp:
            tmp.write_bytes(b"GGUF" + b"\0" * 1000)  # half written when the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DiskFullError, match="about 1000.0 GB is needed"):
        check_free_space(tmp_path, 10**12)  # checked before any work
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"GGUF")
    assert final.read_bytes() == b"GGUF" and list(tmp_path.iterdir()) == [final]


def test_leftovers_of_a_killed_export_are_removed_next_time(tmp_path):
    dead = tmp_path / ".finch-export-999999999-abcd"
    dead.mkdir()
    (tmp_path / ".m-q8_0.gguf.999999999.part").write_bytes(b"GGUF")
    alive = tmp_path / f".finch-export-{os.getpid()}-efgh"
    alive.mkdir()
    assert remove_leftovers(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == [alive.name]


def test_converter_from_a_checkout_or_a_clear_message_when_it_cannot_be_had(tmp_path, monkeypatch):
    from chat_runtime.embedded import cache_dir
    from gguf_export.converter import find_converter, runtime_version

    cached = find_converter(None, cache_dir())  # extracted from the sdist setup.sh fetched
    checkout = find_converter(str(cached.root), tmp_path)  # any llama.cpp tree works as --llama_cpp_dir
    assert checkout.origin.startswith("the llama.cpp checkout") and (checkout.root / "gguf-py").is_dir()
    with pytest.raises(ExportError, match=r"lacks convert_hf_to_gguf.py.*point --llama_cpp_dir at the root"):
        find_converter(str(tmp_path), tmp_path)
    # An empty cache and no index: pip really fails, and the message says what to run.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(
        ExportError,
        match=r"could not fetch llama.cpp's converter .*pip download --no-deps --no-binary :all: "
        r"llama-cpp-python==[\d.]+ -d .*or pass --llama_cpp_dir",
    ):
        find_converter(None, tmp_path / "empty-cache")
    assert not (tmp_path / "empty-cache" / f"llama.cpp-{runtime_version()}").exists()


def test_modelfile_follows_the_template_family():
    from gguf_export.card import modelfile
    from gguf_export.pipeline import Artifact, Export

    llama3 = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
        "<|end_header_id|>\n\n{% endif %}"
    )
    result = Export(
        "m",
        "meta-llama/Llama-3.2-1B-Instruct",
        None,
        "test",
        llama3,
        "<|eot_id|>",
        [Artifact(Path("m-q4_k_m.gguf"), "q4_k_m", 1.0)],
    )
    text = modelfile(result, "m-q4_k_m.gguf")
    assert "FROM ./m-q4_k_m.gguf" in text and "<|start_header_id|>{{ .Role }}<|end_header_id|>" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text and "SYSTEM" not in text  # this template adds no system prompt
    other = modelfile(Export("m", "b", None, "test", "{{ messages }}", "</s>", []), "m-q8_0.gguf")
    assert "TEMPLATE" not in other.replace("# No TEMPLATE", "") and 'PARAMETER stop "</s>"' in other


@pytest.mark.e2e
def test_a_killed_export_leaves_nothing_at_the_final_path(repo_root, embedded_hf, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen(
        export_cmd(repo_root, "--model", str(embedded_hf), "--quant", "q8_0", "--output_dir", str(out)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob(".finch-export-*/*.gguf")):  # the converter is writing the f16 file
            assert proc.poll() is None and time.monotonic() < deadline, "the export ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the export and its converter, as an OOM kill or power cut would
        proc.wait()
    assert not list(out.glob("*.gguf")), "a killed export left a file at a final path"
    assert remove_leftovers(out) == 1 and list(out.iterdir()) == []  # the next export sweeps the scratch folder


def test_entry_scripts_shadow_nothing(repo_root):
    """gguf/export.py runs with gguf/ first on sys.path: nothing there may share a name with a module
    it imports (stdlib or installed), and `gguf` must still be llama.cpp's gguf-py."""
    code = (
        "import importlib.metadata as m, importlib.util as u, sys, pathlib\n"
        "names = {p.stem for p in pathlib.Path('.').iterdir() if p.suffix == '.py' or p.is_dir()} - {'__pycache__'}\n"
        "installed = {t for d in m.distributions() for t in (d.read_text('top_level.txt') or '').split()}\n"
        "print(sorted(names & (set(sys.stdlib_module_names) | installed)), u.find_spec('gguf').origin)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root / "gguf", capture_output=True, text=True, check=True
    )
    clashes, gguf_origin = proc.stdout.rsplit(" ", 1)
    assert clashes == "['gguf_export']" and "site-packages" in gguf_origin  # our own package only


@pytest.mark.e2e
def test_a_llama3_template_gguf_prompts_with_the_ids_training_used(embedded_hf, llama3_tokenizer, tmp_path):
    """No template drift across the last hop: a model with Llama 3's template and special tokens,
    converted by our export, is prompted by the llama.cpp engine with exactly training's ids."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from chat_runtime.embedded import cache_dir
    from chat_runtime.engines.llamacpp_engine import LlamaCppEngine
    from finetune import masking

    conversation = [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4, of course."},
        {"role": "user", "content": "ನಮಸ್ಕಾರ! 🙂"},
        {"role": "assistant", "content": "ನಮಸ್ಕಾರ!"},
    ]
    tok = llama3_tokenizer
    model = AutoModelForCausalLM.from_pretrained(embedded_hf, dtype=torch.float16)
    model.resize_token_embeddings(len(tok))
    model.config.eos_token_id, model.config.bos_token_id = tok.eos_token_id, tok.bos_token_id
    model.generation_config.eos_token_id, model.generation_config.bos_token_id = tok.eos_token_id, tok.bos_token_id
    folder = tmp_path / "llama3-shaped"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    result = run_export(
        adapter=None, model=str(folder), output_dir=tmp_path / "gguf", name="l3", quants=["f16"], cache=cache_dir()
    )
    engine = LlamaCppEngine(ModelSpec(gguf=str(result.artifacts[0].path)))
    assert "<|start_header_id|>" in engine.template and engine.special_tokens["eos_token"] == "<|eot_id|>"
    trained, _ = masking.tokenize(Dataset.from_dict({"messages": [conversation]}), tok, max_length=None)
    for turns in (conversation[:2], conversation[:4]):  # each generation prompt training saw a reply after
        prompt = engine.encode_chat(turns)
        assert trained[0]["input_ids"][: len(prompt)] == prompt
        assert tok.convert_tokens_to_ids("<|start_header_id|>") in prompt[-6:]  # one control token, not its characters
    engine.llm.close()


# The merged model (--merged_dir): the adapter merged into its base, shipped as a whole 16-bit model.

PLANTED_TOKEN = "hf_" + "finchMergedSecret" + "0123456789abcdef"  # fake, split so no scanner takes it for real


@pytest.fixture(scope="session")
def merged(trained, tmp_path_factory, repo_root):
    """export.py --merged_dir on the trained adapter, pushed with no network: (folder, process). The
    push fails after the folder is complete, as it would offline."""
    adapter, _ = trained
    out = tmp_path_factory.mktemp("merged") / "ahoy-merged"
    env = {**os.environ, "HF_TOKEN": PLANTED_TOKEN, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run(
        export_cmd(repo_root, "--adapter", str(adapter), "--merged_dir", str(out), "--push_to_hub", "finch-tests/ahoy"),
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    return out, proc


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_the_merged_model_is_a_whole_16_bit_model_with_its_tokenizer_template_and_card(merged):
    out, _ = merged
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "README.md"} <= names
    assert "adapter_config.json" not in names and not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float16"
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no scratch left beside it
    card = (out / "README.md").read_text()
    for text in ("library_name: transformers", "AutoModelForCausalLM", "FINCH_MODEL=finch-tests/ahoy", "vllm serve"):
        assert text in card, text
    assert "## Fidelity" in card and str(out.parent) not in card  # no local paths in a card


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_the_merged_models_greedy_replies_equal_the_adapters(merged):
    """gguf/verify.py's merged hop, run on the folder written: plain transformers (no peft) against
    base + adapter through peft, on the fidelity prompts."""
    out, _ = merged
    report = json.loads((out / "fidelity.json").read_text())
    rows = {r["hop"]: r for r in report["summary"]}
    assert list(rows) == ["peft", "merged"]
    # a 16-bit merge may only flip a step where peft itself hesitated (its two best tokens within 0.5 logits)
    assert rows["merged"]["vs_reference_but_near_ties"] == 1.0 and rows["merged"]["vs_reference"] >= 0.9
    assert rows["merged"]["ended_with_eos"] == rows["peft"]["ended_with_eos"]
    merged_texts = next(h["texts"] for h in report["hops"] if h["name"] == "merged")
    assert sum(t.startswith("Ahoy!") for t in merged_texts) >= len(merged_texts) - 1  # the fine-tune is in the weights


@pytest.mark.e2e
@TRAINS_AND_EXPORTS
def test_pushing_the_merged_model_offline_fails_clearly_keeps_it_and_never_shows_the_token(merged):
    out, proc = merged
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Uploading to finch-tests/ahoy failed" in proc.stderr and f"hf upload finch-tests/ahoy {out}" in proc.stderr
    assert (out / "model.safetensors").is_file()  # the folder is complete: only the upload is left to redo
    assert PLANTED_TOKEN not in proc.stdout + proc.stderr + (out / "README.md").read_text()
    assert "Traceback" not in proc.stderr


def test_merged_dir_without_an_adapter_is_refused_before_any_work(repo_root, tmp_path):
    from gguf_export.api import ExportArgs, export

    with pytest.raises(ExportError, match="--merged_dir merges an adapter: give --adapter"):
        export(ExportArgs(model=str(tmp_path), merged_dir=str(tmp_path / "merged")))
    assert not (tmp_path / "merged").exists()
