"""Space packaging: the exact bundle a deploy uploads, started from its folder and called from
gradio_client; the Hub call itself is real code that fails cleanly offline."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

# What a GGUF Space does not install: its app must start and chat without them.
CPU_SPACE_LACKS = ("torch", "peft", "bitsandbytes", "accelerate")
QUESTION = "What is the capital of France?"
SYSTEM_PROMPT = "You are a helpful assistant."


def deploy(repo_root, *args, env=None):
    return subprocess.run(
        [sys.executable, str(repo_root / "spaces" / "deploy.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def front_matter(readme):
    text = readme.read_text()
    return yaml.safe_load(text.split("---")[1])


@pytest.mark.parametrize("app", ["chatbot_app", "storymaker_app"])
def test_the_card_has_the_spaces_front_matter(repo_root, app):
    meta = front_matter(repo_root / app / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["suggested_hardware"] == "t4-small" and meta["python_version"] == "3.11"
    import gradio

    assert meta["sdk_version"] == gradio.__version__
    assert meta["models"] and meta["license"]


def solo_reply(service, message: str, max_new_tokens: int) -> str:
    """`service`'s temperature-0 reply, with the app's default settings otherwise."""
    from chat_runtime import validate

    reply = None
    for reply in service.reply(message, [], SYSTEM_PROMPT, validate(temperature=0, max_new_tokens=max_new_tokens)):
        pass
    return reply.text


def test_dry_run_bundle_starts_and_answers_through_gradio_client(
    repo_root, tmp_path, embedded_gguf, start_app, llama_server_service
):
    bundle = tmp_path / "bundle"
    proc = deploy(
        repo_root, "--app", "chatbot", "--gguf", "someone/finch-gguf/model-q8_0.gguf", "--dry_run", str(bundle)
    )
    assert proc.returncode == 0, proc.stderr
    assert "FINCH_GGUF" in proc.stdout
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["README.md", "app.py", "chat_runtime", "requirements.txt"]
    needs = [line.split("=")[0] for line in (bundle / "requirements.txt").read_text().splitlines() if line[:1] != "#"]
    # a CPU Space: no torch, peft, bitsandbytes
    assert needs == ["huggingface_hub", "transformers", "httpx", "llama-cpp-python"]
    assert front_matter(bundle / "README.md")["models"] == ["someone/finch-gguf"]
    assert front_matter(bundle / "README.md")["suggested_hardware"] == "cpu-basic"
    assert not list(bundle.rglob("__pycache__"))
    # The bundle runs on its own: the runtime beside app.py wins over this checkout's install.
    where = subprocess.run(
        [sys.executable, "-c", "import chat_runtime; print(chat_runtime.__file__)"],
        cwd=bundle,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(bundle / "chat_runtime" / "__init__.py")
    env = {"FINCH_GGUF": str(embedded_gguf), "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    url = start_app(bundle, env, blocked=CPU_SPACE_LACKS)
    from gradio_client import Client

    client = Client(url, verbose=False)
    reply = client.predict(
        message=QUESTION, system_prompt=SYSTEM_PROMPT, temperature=0, max_new_tokens=20, api_name="/chat"
    )
    # the same model on the same engine (llama.cpp's server, the default here), the same reply
    assert reply and reply == solo_reply(llama_server_service, QUESTION, 20)


def test_the_storymaker_bundle_carries_its_system_prompt_and_tells_a_story(
    repo_root, tmp_path, embedded_gguf, start_app
):
    bundle = tmp_path / "story"
    proc = deploy(
        repo_root, "--app", "storymaker", "--gguf", "someone/finch-gguf/model-q8_0.gguf", "--dry_run", str(bundle)
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["README.md", "app.py", "chat_runtime", "requirements.txt", "system_prompt.md"]
    assert (bundle / "system_prompt.md").read_text() == (repo_root / "storymaker_app" / "system_prompt.md").read_text()
    assert (bundle / "chat_runtime" / "story.py").is_file() and "llama-cpp-python" in (
        bundle / "requirements.txt"
    ).read_text()
    assert front_matter(bundle / "README.md")["models"] == ["someone/finch-gguf"]
    env = {"FINCH_GGUF": str(embedded_gguf), "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    url = start_app(bundle, env)
    from gradio_client import Client

    client = Client(url, verbose=False)  # one client, one story
    title, choices, story, _download, _action = client.predict(
        title="The Lost Lighthouse", genre="mystery", tone="eerie", temperature=0, max_new_tokens=16, api_name="/begin"
    )
    assert title.startswith("# The Lost Lighthouse") and 2 <= len(choices) <= 4
    assert [m["role"] for m in story] == ["assistant"]
    _, _, story, download, _ = client.predict(action=choices[0], temperature=0, max_new_tokens=16, api_name="/act")
    assert [m["role"] for m in story] == ["assistant", "user", "assistant"]
    assert f"> **You:** {choices[0]}" in open(download, encoding="utf-8").read()


# Decodes the embedded GGUF (Q4_1) through the bundle's own runtime, in the Space's environment.
SPACE_DECODE = """
import sys
from chat_runtime import ChatService, GenerationParams, ModelSpec
from chat_runtime.engines import cpu_variants
service = ChatService.from_spec(ModelSpec(engine="llamacpp", gguf=sys.argv[1]))
params = GenerationParams(temperature=0.0, max_new_tokens=20, repetition_penalty=1.0)
print(cpu_variants.load_cpu_variant())
print(list(service.reply(sys.argv[2], [], sys.argv[3], params))[-1].text)
"""


def objdump(library) -> str:
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True, check=True
    ).stdout


def test_a_gguf_space_installs_llama_cpp_for_any_x86_cpu_offline_and_chats_here(
    repo_root, tmp_path, embedded_gguf, launch_app, llama_server_child
):
    """The bundle's requirements go into a fresh virtual environment offline, as a Space installs
    them (llama-cpp-python from the wheel setup.sh built from the bundle's own requirement line), with
    the Gradio of the card's sdk_version; a quantized GGUF decodes there, and the bundle's app chats
    through llama.cpp's server from that install with no engine named. The library uses no
    instruction beyond baseline x86-64 outside its per-CPU variants, and the variant loaded here is
    never the AMX one gcc 12 miscompiles."""
    import hashlib

    from chat_runtime import embedded
    from chat_runtime.engines.cpu_variants import NEVER, allowed, cpu_flags, variant_name

    bundle = tmp_path / "bundle"
    assert (
        deploy(repo_root, "--app", "chatbot", "--gguf", "a/b/m-q4_k_m.gguf", "--dry_run", str(bundle)).returncode == 0
    )
    requirements = (bundle / "requirements.txt").read_text()
    assert "-DGGML_NATIVE=OFF;-DGGML_BACKEND_DL=ON;-DGGML_CPU_ALL_VARIANTS=ON" in requirements
    sdk = f"gradio=={front_matter(bundle / 'README.md')['sdk_version']}\n"  # what the Space adds for its SDK
    key = hashlib.md5((requirements + sdk).encode()).hexdigest()[:12]
    wheels = embedded.cache_dir() / "gguf-space" / key / "wheels"
    assert wheels.is_dir(), "run `bash scripts/setup.sh --test`: it builds and downloads a GGUF Space's packages once"
    venv = tmp_path / "space-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull}
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", "requirements.txt"]
    installed = subprocess.run(pip, cwd=bundle, env=offline, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not [m for m in ("torch", "peft", "bitsandbytes", "gradio") if (site / m).exists()]
    for library in ("libggml-base.so.0", "libggml.so.0", "libllama.so.0"):
        code = objdump(site / "llama_cpp" / "lib" / library)
        assert "%ymm" not in code and "%zmm" not in code, f"{library} uses AVX: not every x86-64 CPU runs it"
    variants = sorted(variant_name(p) for p in (site / "bin").glob("libggml-cpu-*.so"))
    assert {"x64", "haswell", "sapphirerapids"} <= set(variants)
    assert "tdpbssd" in objdump(site / "bin" / "libggml-cpu-sapphirerapids.so")  # AMX lives there only

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONNOUSERSITE": "1"}

    def in_the_space(code: str) -> list[str]:
        """The two lines `code` prints, run by the Space's python in the bundle on the embedded GGUF."""
        args = [python, "-c", code, str(embedded_gguf), QUESTION, SYSTEM_PROMPT]
        done = subprocess.run(args, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split("\n", 1)

    variant, reply = in_the_space(SPACE_DECODE)
    assert variant in allowed(variants, cpu_flags()) and variant not in NEVER
    assert "Paris" in reply
    # The Space's app, with the Gradio its card names, serves through llama.cpp's server from the
    # same install by default (several users at once), on that very CPU code, and it answers.
    gradio = subprocess.run([*pip[:-2], sdk.strip()], env=offline, capture_output=True, text=True, timeout=600)
    assert gradio.returncode == 0, gradio.stderr[-3000:]
    app_env = {**env, "FINCH_GGUF": str(embedded_gguf), "PYTHONPATH": ""}
    app, port = launch_app(bundle, app_env, tmp_path / "space.log", python=python)
    try:
        from gradio_client import Client

        reply = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            message=QUESTION, system_prompt=SYSTEM_PROMPT, temperature=0, max_new_tokens=20, api_name="/chat"
        )
        maps = Path(f"/proc/{llama_server_child(app.pid)}/maps").read_text().split()
        assert sorted({Path(m).name for m in maps if "libggml-cpu-" in m}) == [f"libggml-cpu-{variant}.so"]
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30).read().decode()
        assert "Paris" in reply and "llama.cpp server · CPU · 4 at once" in page
    finally:
        app.terminate()
        app.wait(10)
    # and batched prompts decode as token by token there (setup's check of its own builds)
    check = [python, str(repo_root / "scripts" / "check_llama_build.py"), str(embedded_gguf)]
    checked = subprocess.run(check, env={**env, "PYTHONPATH": str(bundle)}, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]


def test_the_bundle_never_ships_a_spaces_or_gguf_package(tmp_path):
    from space_deploy.bundle import check_bundle

    (tmp_path / "app.py").write_text("")
    (tmp_path / "spaces").mkdir()
    with pytest.raises(ValueError, match="shadow the 'spaces' package"):
        check_bundle(tmp_path)


def test_deploy_without_a_token_says_how_to_get_one(repo_root, tmp_path):
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    proc = deploy(repo_root, "--space_id", "someone/finch-chat", "--adapter", "someone/adapter", env=env)
    assert proc.returncode != 0 and "set HF_TOKEN or run `hf auth login`" in proc.stderr


def test_deploy_offline_fails_cleanly_without_leaking_the_token(repo_root, tmp_path):
    token = "hf_" + "FakeTokenForTests" * 2
    env = {
        "HF_TOKEN": token,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }  # a closed local port: the real request, no network
    proc = deploy(repo_root, "--space_id", "someone/finch-chat", "--adapter", "someone/adapter", env=env)
    assert proc.returncode != 0 and "Deploying to someone/finch-chat failed" in proc.stderr
    assert "The bundle is complete; deploy again to retry." in proc.stderr
    assert token not in proc.stdout + proc.stderr


def test_deploy_needs_something_to_serve(repo_root):
    proc = deploy(repo_root, "--dry_run", "/tmp/never")
    assert proc.returncode != 0 and "Say what the Space serves" in proc.stderr


def test_a_server_space_needs_no_torch_keeps_its_key_secret_and_tells_a_story(
    repo_root, tmp_path, llama_servers, start_app
):
    key = "finch-test-" + "key-" + "d3p10y"
    bundle = tmp_path / "story"
    proc = deploy(
        repo_root,
        "--app",
        "storymaker",
        "--server_url",
        "https://llm.example.org/v1",
        "--server_model",
        "meta-llama/Llama-3.2-3B-Instruct",
        "--dry_run",
        str(bundle),
        env={"FINCH_SERVER_API_KEY": key},
    )
    assert proc.returncode == 0, proc.stderr
    assert "FINCH_SERVER_URL" in proc.stdout and "Space secrets: FINCH_SERVER_API_KEY" in proc.stdout
    assert key not in proc.stdout + proc.stderr + "".join(p.read_text() for p in bundle.glob("*.*"))
    needs = [line for line in (bundle / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert not [n for n in needs if n.split("=")[0] in ("torch", "transformers", "llama-cpp-python")]
    server = llama_servers(api_key=key).start()
    env = {
        "FINCH_SERVER_URL": server.url,
        "FINCH_SERVER_MODEL": server.MODEL,
        "FINCH_SERVER_API_KEY": key,
        "PYTHONPATH": "",
        "PYTHONNOUSERSITE": "1",
    }
    # The app builds with torch and transformers unimportable, as on a Space without them.
    code = "import sys; sys.modules.update(torch=None, transformers=None); import app; print(app.service.engine.label)"
    built = subprocess.run(
        [sys.executable, "-c", code], cwd=bundle, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0 and "inference server" in built.stdout, built.stderr[-2000:]
    from gradio_client import Client

    client = Client(start_app(bundle, env), verbose=False)
    title, choices, story, _download, _action = client.predict(
        title="The Lost Lighthouse", genre="mystery", tone="eerie", temperature=0, max_new_tokens=60, api_name="/begin"
    )
    assert title.startswith("# The Lost Lighthouse") and 2 <= len(choices) <= 4 and story[0]["content"]


def test_a_server_deploy_is_checked_before_anything_happens(repo_root):
    proc = deploy(repo_root, "--server_url", "http://h/v1", "--dry_run", "/tmp/never")
    assert proc.returncode != 0 and "set FINCH_SERVER_MODEL" in proc.stderr


def test_a_zerogpu_space_gets_the_transformers_stack_and_a_gguf_one_is_refused(repo_root, tmp_path):
    bundle = tmp_path / "zero"
    proc = deploy(repo_root, "--adapter", "someone/adapter", "--hardware", "zero-a10g", "--dry_run", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert front_matter(bundle / "README.md")["suggested_hardware"] == "zero-a10g"
    needs = [line.split("=")[0] for line in (bundle / "requirements.txt").read_text().splitlines() if line[:1] != "#"]
    assert {"torch", "transformers", "peft"} <= set(needs) and "llama-cpp-python" not in needs
    assert not (bundle / "spaces").exists()  # the Hub's `spaces` package is the one the runtime imports there
    proc = deploy(repo_root, "--gguf", "a/b/c.gguf", "--hardware", "zero-a10g", "--dry_run", str(tmp_path / "no"))
    assert proc.returncode != 0 and "runs on cpu-basic" in proc.stderr and not (tmp_path / "no").exists()


def test_a_compare_space_carries_its_second_model_and_votes_dataset(repo_root, tmp_path):
    bundle = tmp_path / "compare"
    proc = deploy(
        repo_root,
        *("--adapter", "someone/adapter", "--compare", "someone/tuned-gguf/model-q8_0.gguf"),
        *("--votes_dataset", "someone/finch-votes", "--dry_run", str(bundle)),
    )
    assert proc.returncode == 0, proc.stderr
    assert '"FINCH_COMPARE": "someone/tuned-gguf/model-q8_0.gguf"' in proc.stdout
    assert '"FINCH_VOTES_DATASET": "someone/finch-votes"' in proc.stdout and "HF_TOKEN secret" in proc.stdout
    needs = [line.split("=")[0] for line in (bundle / "requirements.txt").read_text().splitlines() if line[:1] != "#"]
    assert {"torch", "peft", "llama-cpp-python"} <= set(needs)  # the GGUF on the right needs llama.cpp too
    # What the Space could not start is refused before anything is written.
    refused = {
        ("--app", "storymaker", "--adapter", "a/b", "--compare", "base"): "the storymaker has none",
        ("--model", "a/b", "--compare", "base"): "it needs --adapter",
        ("--gguf", "a/b/c.gguf", "--compare", "a/adapter"): "installs no torch",
    }
    for args, message in refused.items():
        proc = deploy(repo_root, *args, "--dry_run", str(tmp_path / "no"))
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert not (tmp_path / "no").exists()
