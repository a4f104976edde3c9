"""scripts/gpu_check.sh, the one prepared check for a CUDA machine: without one it stops at once."""

import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions


def test_without_a_cuda_gpu_the_check_stops_at_once_and_says_why(repo_root):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the check would run for minutes")
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(repo_root / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 5
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no CUDA GPU on this machine" in proc.stderr
    assert "pip install -r requirements-gpu.txt" in proc.stderr and "--prepare" in proc.stderr


def test_an_unknown_option_is_refused(repo_root):
    proc = subprocess.run(
        ["bash", str(repo_root / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "unknown option --fast: use no option, or --prepare" in proc.stderr
