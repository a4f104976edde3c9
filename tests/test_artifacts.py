"""Final files appear whole or not at all: a GGUF export killed mid-quantization leaves nothing at a
final path and the same command then works; a Space bundle that fails midway leaves the previous one
as it was. (A killed training run: tests/test_train.py; a killed conversion: test_gguf_export.py.)"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gguf_export.files import PART_SUFFIX, WORK_PREFIX
from gguf_export.quantize import inspect_gguf

ROOT = Path(__file__).resolve().parents[1]
QUANTS = ["q8_0", "q4_k_m", "f16"]


def export(out: Path, embedded_hf: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "gguf" / "export.py"),
        "--model",
        str(embedded_hf),
        "--name",
        "whole",
        "--quant",
        *QUANTS,
        "--output_dir",
        str(out),
    ]


@pytest.mark.e2e
def test_an_export_killed_while_quantizing_leaves_no_final_file_and_the_next_run_works(tmp_path, embedded_hf):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        export(out, embedded_hf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        # A quantized file is being written beside its final name, as a hidden .part file.
        while not (out.is_dir() and any(p.name.endswith(PART_SUFFIX) for p in out.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "the export ended before it could be killed"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the export and anything it started, as an OOM kill would
        proc.wait()
    finals = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert finals == [], f"a killed export left {finals} at the final paths"
    assert any(p.name.endswith(PART_SUFFIX) for p in out.iterdir())  # killed mid-write, indeed

    again = subprocess.run(export(out, embedded_hf), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["Modelfile", "README.md"] + [f"whole-{q}.gguf" for q in QUANTS])  # leftovers swept
    for quant in QUANTS:
        meta = inspect_gguf(out / f"whole-{quant}.gguf")  # llama.cpp loads each, chat template and all
        assert meta["tokenizer.chat_template"]
    assert not any(p.name.startswith(WORK_PREFIX) or p.name.endswith(PART_SUFFIX) for p in out.iterdir())


def test_a_bundle_that_fails_midway_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from space_deploy import bundle as bundle_module

    dest = tmp_path / "bundle"
    bundle_module.assemble("chatbot", dest, {"FINCH_GGUF": "someone/finch-gguf/a-q8_0.gguf"})
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    def disk_fills_up(folder):  # the copy is done, the check is next: the disk fills up there
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module, "check_bundle", disk_fills_up)
    with pytest.raises(OSError):
        bundle_module.assemble("chatbot", dest, {"FINCH_GGUF": "someone/other-gguf/b-q8_0.gguf"})
    after = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert after == before, "a failed assembly changed the bundle at the final path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no half-built folder beside it
    monkeypatch.undo()
    bundle_module.assemble("chatbot", dest, {"FINCH_GGUF": "someone/other-gguf/b-q8_0.gguf"})
    assert "someone/other-gguf" in (dest / "README.md").read_text()
