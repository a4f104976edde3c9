"""Security: no token in anything the product writes or serves, weights only from safetensors,
no model repo code unless asked, no file served beyond the apps' own assets, and the bind address
(127.0.0.1 here, 0.0.0.0 only on a Space). Everything runs for real: a training run, an export, a
deploy bundle and the app started from it."""

from __future__ import annotations

import http.client
import json
import os
import pickle
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from chat_runtime import ChatService, ModelSpec
from chat_runtime.errors import UserError
from chat_runtime.serving import server_name

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = ROOT / "training" / "recipes" / "cpu-smollm2-sample.yaml"
# A fake token, built so no secret scanner takes this file for a leak.
TOKEN = "hf_" + "FinchPlantedSecret" + "0123456789ABCDEFabcdef"
DOTENV_SECRET = "FINCH_DOTENV_" + "SECRET_VALUE_42"


def run(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def listening_addresses(port: int) -> set[str]:
    """Addresses a TCP socket listens on at `port`, read from the kernel (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found


def get(port: int, raw_path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side normalisation of `..` or `%2f`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", raw_path)
    response = conn.getresponse()
    return response.status, response.read()


# The product's whole path with a token planted -------------------------------------------------


@pytest.fixture(scope="module")
def product_with_token(tmp_path_factory, embedded_gguf, launch_app):
    """Train (2 steps), export to GGUF, build a Space bundle and start it, each with HF_TOKEN set;
    returns the folders written, the commands' output, and the running app's port and log."""
    work = tmp_path_factory.mktemp("secrets")
    env = {"HF_TOKEN": TOKEN}
    outputs = []
    run_dir = work / "run"
    proc = run(
        "training/train.py",
        "--config",
        str(CPU_RECIPE),
        "--output_dir",
        str(run_dir),
        "--max_rows",
        "24",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--eval_fraction",
        "0",
        "--logging_steps",
        "1",
        "--max_seq_length",
        "128",
        "--sample_max_new_tokens",
        "4",
        # The fidelity checks (here and in the export) decode 10 prompts for minutes and see no token;
        # test_train and test_gguf_export run them.
        "--verify",
        "false",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs.append(proc.stdout + proc.stderr)
    gguf_dir = work / "gguf"
    proc = run(
        "gguf/export.py",
        "--adapter",
        str(run_dir / "adapter"),
        "--quant",
        "q8_0",
        "--output_dir",
        str(gguf_dir),
        "--verify",
        "false",
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs.append(proc.stdout + proc.stderr)
    bundle = work / "bundle"
    proc = run(
        "spaces/deploy.py",
        "--app",
        "chatbot",
        "--gguf",
        "someone/finch-gguf/model-q8_0.gguf",
        "--dry_run",
        str(bundle),
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs.append(proc.stdout + proc.stderr)
    (bundle / ".env").write_text(f"{DOTENV_SECRET}=1\n")  # a secret file in the app's working folder
    log = work / "app.log"
    server, port = launch_app(bundle, {**env, "FINCH_GGUF": str(embedded_gguf), "PYTHONPATH": ""}, log)
    try:
        yield {"folders": [run_dir, gguf_dir, bundle], "outputs": outputs, "port": port, "log": log, "bundle": bundle}
    finally:
        stop(server)


@pytest.mark.e2e
def test_no_token_in_anything_the_product_writes_or_serves(product_with_token):
    from gradio_client import Client

    found = product_with_token
    port = found["port"]
    # Use the app, so the log holds a real request too.
    reply = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
        message="Hello!", temperature=0, max_new_tokens=4, api_name="/chat"
    )
    assert isinstance(reply, str) and reply.strip()
    served = {
        path: urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read()
        for path in ("/", "/config", "/gradio_api/info", "/gradio_api/info?all_endpoints=true")
    }
    written = {p: p.read_bytes() for folder in found["folders"] for p in folder.rglob("*") if p.is_file()}
    assert len(written) > 20  # adapter, checkpoints, logs, GGUF, card, Modelfile, bundle
    kinds = {p.suffix for p in written}
    assert {".safetensors", ".json", ".yaml", ".md", ".gguf", ".py"} <= kinds, kinds
    leaks = [str(p) for p, data in written.items() if TOKEN.encode() in data]
    leaks += [path for path, data in served.items() if TOKEN.encode() in data]
    leaks += [f"command output {i}" for i, text in enumerate(found["outputs"]) if TOKEN in text]
    leaks += ["app log"] if TOKEN in found["log"].read_text(errors="replace") else []
    assert leaks == [], f"the planted token appears in: {leaks}"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path",
    [
        "/file=.env",
        "/file=../.env",
        "/gradio_api/file=.env",
        "/gradio_api/file=./.env",
        "/gradio_api/file=../bundle/.env",
        "/gradio_api/file=app.py",
        "/gradio_api/file=chat_runtime/spec.py",
        "/gradio_api/file=/etc/passwd",
        "/file=/etc/passwd",
        "/gradio_api/file=../../../../../../etc/passwd",
        "/gradio_api/file=..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/file=%2fetc%2fpasswd",
        "/gradio_api/file=%252e%252e%252fetc%252fpasswd",
        "/gradio_api/file=....//....//etc/passwd",
        "/gradio_api/file=/proc/self/environ",
        "/gradio_api/file=~/.cache/finch",
        "/gradio_api/file=~/.bashrc",
        "/static/../../../../etc/passwd",
        "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/file%3D/etc/passwd",
        "{bundle}/.env",
        "{bundle}/app.py",
        "{repo}/README.md",
        "{repo}/chatbot_app/app.py",
        "{home}/.cache/finch",
    ],
)
def test_the_app_serves_no_file_beyond_its_own_assets(product_with_token, path):
    found = product_with_token
    path = path.format(
        bundle="/gradio_api/file=" + str(found["bundle"]),
        repo="/gradio_api/file=" + str(ROOT),
        home="/gradio_api/file=" + str(Path.home()),
    )
    status, body = get(found["port"], path)
    assert status in (400, 403, 404), (status, body[:200])
    for secret in (DOTENV_SECRET.encode(), b"root:x:0:0", b"import gradio", TOKEN.encode(), b"HF_TOKEN"):
        assert secret not in body


@pytest.mark.e2e
def test_the_app_still_serves_its_own_page_and_assets(product_with_token):
    port = product_with_token["port"]
    status, page = get(port, "/")
    assert status == 200 and b"<html" in page.lower()
    assert get(port, "/theme.css")[0] == 200 and get(port, "/favicon.ico")[0] == 200


# Bind address -----------------------------------------------------------------------------------


def test_bind_address_is_local_unless_on_a_space(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert server_name() == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "someone/finch-chat")
    assert server_name() == "0.0.0.0"
    monkeypatch.setenv("SPACE_ID", "")
    assert server_name() == "127.0.0.1"


@pytest.mark.e2e
def test_a_started_app_listens_on_loopback_only(product_with_token):
    assert listening_addresses(product_with_token["port"]) == {"127.0.0.1"}


@pytest.mark.e2e
def test_on_a_space_the_app_listens_on_all_interfaces(product_with_token, embedded_gguf, tmp_path, launch_app):
    env = {
        "SPACE_ID": "someone/finch-chat",
        "FINCH_GGUF": str(embedded_gguf),
        "GRADIO_SERVER_NAME": "",
        "PYTHONPATH": "",
    }
    server, port = launch_app(product_with_token["bundle"], env, tmp_path / "space.log")
    try:
        assert listening_addresses(port) == {"0.0.0.0"}
    finally:
        stop(server)


# Weights only from safetensors; no repo code unless asked ---------------------------------------


class _Trap:
    """Unpickling this touches a file: proof that a loader opened the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _folder_with_pickled_weights(folder: Path, source: Path, weights: str, marker: Path) -> Path:
    folder.mkdir()
    for item in source.iterdir():
        if item.suffix in (".json", ".jinja", ".txt") and item.name != "model.safetensors.index.json":
            shutil.copy(item, folder)
    (folder / weights).write_bytes(pickle.dumps({"weight": _Trap(marker)}))
    return folder


def test_weights_in_a_pickle_are_refused_everywhere_before_they_are_read(tmp_path, embedded_hf):
    marker = tmp_path / "pickle-was-loaded"
    model = _folder_with_pickled_weights(tmp_path / "model", embedded_hf, "pytorch_model.bin", marker)
    with pytest.raises(
        ValueError,
        match=r"the base model .* has its weights only in pytorch_model.bin, no .safetensors\. "
        r"Finch loads safetensors only.*save_pretrained",
    ):
        ChatService.from_spec(ModelSpec(base=str(model)))

    from finetune.backends import Device, load_peft
    from finetune.config import AdapterArgs, ModelArgs

    with pytest.raises(UserError, match="has its weights only in pytorch_model.bin"):
        load_peft(
            str(model),
            ModelArgs(model=str(model), finetuning="lora"),
            AdapterArgs(),
            Device("cpu", "float32", "CPU"),
            0,
        )

    from gguf_export import ExportError
    from gguf_export.pipeline import run_export

    with pytest.raises(ExportError, match="has its weights only in pytorch_model.bin"):
        run_export(
            adapter=None,
            model=str(model),
            output_dir=tmp_path / "out",
            name=None,
            quants=["q8_0"],
            cache=tmp_path / "cache",
        )

    # An adapter saved as a pickle, on a good base: refused by the Space runtime and by the export.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "base_model_name_or_path": str(embedded_hf),
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["q_proj"],
                "task_type": "CAUSAL_LM",
            }
        )
    )
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"weight": _Trap(marker)}))
    with pytest.raises(ValueError, match="the adapter .* has its weights only in adapter_model.bin"):
        ChatService.from_spec(ModelSpec(adapter=str(adapter)))
    with pytest.raises(ExportError, match="the adapter .* has its weights only in adapter_model.bin"):
        run_export(
            adapter=str(adapter),
            model=None,
            output_dir=tmp_path / "out2",
            name=None,
            quants=["q8_0"],
            cache=tmp_path / "cache",
        )
    assert not marker.exists(), "a pickle was unpickled"
    pickle.loads((adapter / "adapter_model.bin").read_bytes())
    assert marker.exists()  # the trap works: loading it would have run code


def test_a_model_repo_with_its_own_code_is_refused_unless_asked(tmp_path, embedded_hf, monkeypatch):
    marker = tmp_path / "repo-code-ran"
    model = tmp_path / "custom"
    model.mkdir()
    for item in embedded_hf.iterdir():
        if item.suffix in (".json", ".jinja", ".safetensors"):
            (model / item.name).symlink_to(item)
    config = json.loads((embedded_hf / "config.json").read_text())
    config.update(
        model_type="finch_custom",
        auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"},
    )
    (model / "config.json").unlink()
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    monkeypatch.delenv("FINCH_TRUST_REMOTE_CODE", raising=False)
    from chat_runtime import from_env
    from finetune.config import ModelArgs

    assert from_env().trust_remote_code is False and ModelArgs().trust_remote_code is False
    with pytest.raises(
        ValueError, match="needs its own Python code to load.*if you trust it, set FINCH_TRUST_REMOTE_CODE=1"
    ):
        ChatService.from_spec(ModelSpec(base=str(model)))
    assert not marker.exists(), "the repo's own code ran without being asked"
    monkeypatch.setenv("FINCH_TRUST_REMOTE_CODE", "1")
    assert from_env().trust_remote_code is True  # asked for: passed on to transformers
