"""ZeroGPU: the transformers engine's generation runs under `@spaces.GPU` on a ZeroGPU Space and
is left alone anywhere else; the repository's `spaces/` folder never stands in for that package."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code: str, cwd: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_off_zerogpu_nothing_is_decorated_and_spaces_is_never_imported(tmp_path):
    proc = run(
        """
        import sys
        from chat_runtime import zerogpu
        def reply(): yield "hi"
        assert zerogpu.gpu_task(reply) is reply
        zerogpu.prepare()
        print("spaces" in sys.modules)
        """,
        cwd=str(tmp_path),
        SPACES_ZERO_GPU="",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_on_zerogpu_the_repository_folder_does_not_pass_for_the_spaces_package():
    # From the repository root, `import spaces` finds our folder, which refuses to be imported.
    proc = run("from chat_runtime import zerogpu; zerogpu.gpu_task(print)", cwd=ROOT, SPACES_ZERO_GPU="true")
    assert proc.returncode != 0 and "not Hugging Face's `spaces` package" in proc.stderr


@pytest.mark.e2e
def test_on_zerogpu_each_reply_streams_through_spaces_gpu(tmp_path, embedded_hf):
    # The Hub's `spaces` package is only on Spaces: a stand-in with its decorator's signature records
    # how the engine uses it and runs the reply as is (as the real one does once a GPU is attached).
    (tmp_path / "spaces.py").write_text(
        textwrap.dedent(
            """
            calls = []
            def GPU(duration):
                def attach(fn):
                    def run(*args, **kwargs):
                        calls.append(duration)
                        yield from fn(*args, **kwargs)
                    return run
                return attach
            """
        )
    )
    proc = run(
        f"""
        import threading, spaces
        from chat_runtime import ModelSpec
        from chat_runtime.engines import load_engine
        from chat_runtime.params import GenerationParams
        engine = load_engine(ModelSpec(base={str(embedded_hf)!r}))
        ids = engine.encode_chat([{{"role": "user", "content": "Say hello."}}])
        params = GenerationParams(temperature=0.0, max_new_tokens=6)
        text = "".join(engine.stream(ids, params, threading.Event()))
        print(spaces.calls, bool(text.strip()))
        """,
        cwd=str(tmp_path),
        SPACES_ZERO_GPU="true",
        FINCH_ZEROGPU_SECONDS="45",
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[45] True"
