import json
import shutil
import sys
from pathlib import Path

import pytest

from chat_runtime import ModelSpec, from_env
from chat_runtime.spec import base_of_adapter

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions


def test_nothing_set_means_the_embedded_gguf_on_llama_cpp_and_its_server_where_installed(
    monkeypatch, embedded_gguf, tmp_path
):
    names = ("FINCH_ENGINE", "FINCH_MODEL", "FINCH_ADAPTER", "FINCH_GGUF", "FINCH_LOAD_IN_4BIT", "FINCH_LLAMA_SERVER")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    # setup.sh links its llama-server beside the venv's python (a GGUF Space's build installs one too)
    installed = shutil.which("llama-server", path=str(Path(sys.executable).parent))
    spec = from_env().resolved()
    assert spec.gguf == str(embedded_gguf)
    assert spec.engine == ("llama-server" if installed else "llamacpp")
    # a python with no llama-server beside it: the GGUF is served in process
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert from_env().resolved().engine == "llamacpp"
    # a server named by FINCH_LLAMA_SERVER is the one taken
    monkeypatch.setenv("FINCH_LLAMA_SERVER", str(tmp_path / "llama-server"))
    assert from_env().resolved().engine == "llama-server"
    # code that needs one engine names it (evaluation, the judge, the benchmarks)
    assert ModelSpec(engine="llamacpp", gguf=str(embedded_gguf)).resolved().engine == "llamacpp"


def test_env_describes_a_space(monkeypatch, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.2-1B-Instruct"})
    )
    monkeypatch.setenv("FINCH_ADAPTER", str(adapter))
    monkeypatch.setenv("FINCH_LOAD_IN_4BIT", "1")
    spec = from_env().resolved()
    assert (spec.engine, spec.base, spec.adapter, spec.load_in_4bit) == (
        "transformers",
        "meta-llama/Llama-3.2-1B-Instruct",
        str(adapter),
        True,
    )
    assert spec.label.endswith(f"+ adapter {adapter}")


def test_base_of_a_local_adapter_and_clear_errors(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    assert base_of_adapter(str(tmp_path)) == "org/base"
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="names no base model"):
        base_of_adapter(str(tmp_path))
    with pytest.raises(ValueError, match="has no adapter_config.json"):
        base_of_adapter(str(tmp_path / ".."))
    # Offline (the tests set HF_HUB_OFFLINE): a Hub id fails with what to do, not a traceback.
    with pytest.raises(ValueError, match="could not read adapter_config.json of 'someone/adapter'"):
        base_of_adapter("someone/adapter")


@pytest.mark.parametrize(
    "spec, fragment",
    [
        (ModelSpec(gguf="x.gguf", base="org/base"), "not both"),
        (ModelSpec(engine="vllm", base="org/base"), "unknown engine 'vllm'"),
        (ModelSpec(engine="llamacpp", base="org/base"), "runs a GGUF file"),
        (ModelSpec(engine="transformers", gguf="x.gguf"), "needs FINCH_MODEL"),
        (ModelSpec(gguf="x.gguf", load_in_4bit=True), "transformers engine only"),
    ],
)
def test_impossible_specs_fail_at_start(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        spec.resolved()


def test_env_describes_an_inference_server_and_hides_its_key(monkeypatch):
    key = "finch-test-" + "key-" + "7e1d"
    monkeypatch.setenv("FINCH_SERVER_URL", "https://llm.example.org/v1")
    monkeypatch.setenv("FINCH_SERVER_MODEL", "meta-llama/Llama-3.2-3B-Instruct")
    monkeypatch.setenv("FINCH_SERVER_API_KEY", key)
    spec = from_env().resolved()
    assert (spec.engine, spec.server_model, spec.server_api_key) == ("server", "meta-llama/Llama-3.2-3B-Instruct", key)
    assert spec.gguf is None  # no embedded model is loaded beside a server
    assert key not in repr(spec) and key not in spec.label and "example.org" not in spec.label


@pytest.mark.parametrize(
    "spec, fragment",
    [
        (ModelSpec(engine="server"), "needs FINCH_SERVER_URL"),
        (ModelSpec(server_url="http://127.0.0.1:8000/v1"), "set FINCH_SERVER_MODEL"),
        (ModelSpec(server_url="127.0.0.1:8000", server_model="m"), "must be an http"),
        (ModelSpec(server_url="http://h/v1", server_model="m", gguf="x.gguf"), "not both"),
        (ModelSpec(server_url="http://h/v1", server_model="m", engine="llamacpp"), "for the server engine"),
    ],
)
def test_impossible_server_specs_fail_at_start(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        spec.resolved()
