"""Every model family Finch fine-tunes, on its real tokenizer and real chat template (both read from
llama.cpp's sources in the cache, see finetune.standin): masks token by token, the end-of-turn token
trained, system prompts on families without a system role, recipes."""

from __future__ import annotations

import pytest

from chat_runtime import families
from chat_runtime.families import BY_NAME, SystemRoleError, fold_system
from chat_runtime.templating import render, segments
from finetune import masking, standin

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]
REPLIES = [m["content"] for m in MESSAGES if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def tokenizers():
    """Each family's stand-in tokenizer, prepared as training prepares it, built once."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = masking.prepare_tokenizer(standin.tokenizer(name))
        return built[name]

    return get


def tokenize(tokenizer, messages):
    """Training's own batch tokenizer on one row (the Rust encoder: tiktoken's equivalence check for
    Llama 3 is proven in test_fastbpe, and is slow)."""
    row = masking._tokenize_batch(
        {"messages": [messages]},
        tokenizer.chat_template,
        tokenizer.special_tokens_map,
        masking.RustBatch(tokenizer),
        None,
    )
    assert row["bad_reason"] == [""], row["bad_reason"]
    return row["input_ids"][0], row["labels"][0]


def trained_runs(labels):
    """The trained stretches of a row, as lists of ids."""
    runs, current = [], []
    for label in labels:
        if label == masking.IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("name", standin.FAMILY_NAMES)
def test_each_family_trains_exactly_its_replies_and_their_end_of_turn_token(tokenizers, name):
    tok = tokenizers(name)
    family = families.family_of(tok.chat_template)
    assert family is BY_NAME[name]
    ids, labels = tokenize(tok, MESSAGES)
    eot = tok.convert_tokens_to_ids(family.end_of_turn)
    assert tok.convert_ids_to_tokens(eot) == family.end_of_turn  # one control token, not text
    runs = trained_runs(labels)
    # Token by token: each trained stretch is one reply followed by the end-of-turn token, nothing else.
    assert len(runs) == len(REPLIES)
    for run, reply in zip(runs, REPLIES):
        assert run[-1] == eot
        assert tok.decode(run[:-1]) == reply
    assert [i for i, label in zip(ids, labels) if label != masking.IGNORE] == sum(runs, [])
    # The pad token is never the end-of-turn token, whose only copies in the loss are the replies' ends.
    assert tok.pad_token != family.end_of_turn and tok.pad_token is not None
    assert labels.count(eot) == len(REPLIES)


@pytest.mark.parametrize(
    "name, injected",
    [
        ("qwen2.5", "You are Qwen, created by Alibaba Cloud"),  # default system prompt when none is given
        ("qwen3", "<think>\n\n</think>"),  # the empty think block before the last reply
        ("smollm3", "## Metadata"),  # the metadata header
        ("gemma2", "<start_of_turn>model\n"),  # the assistant's role name
        ("llama3", "Cutting Knowledge Date"),
    ],
)
def test_text_the_template_adds_is_in_the_prompt_never_in_the_loss(tokenizers, name, injected):
    tok = tokenizers(name)
    messages = MESSAGES[1:] if name == "qwen2.5" else MESSAGES
    ids, labels = tokenize(tok, messages)
    prompt_text = tok.decode([i for i, label in zip(ids, labels) if label == masking.IGNORE])
    trained_text = tok.decode([label for label in labels if label != masking.IGNORE])
    assert injected in prompt_text and injected.strip() not in trained_text


@pytest.mark.parametrize("name", standin.FAMILY_NAMES)
def test_the_serving_prompt_is_exactly_the_start_of_the_training_ids(tokenizers, name):
    """What an engine sends for the last reply (same renderer, same cuts) is a prefix of the ids trained."""
    from chat_runtime.templating import encode

    tok = tokenizers(name)
    ids, _ = tokenize(tok, MESSAGES)
    role = families.system_role(tok.chat_template)
    parts = segments(
        tok.chat_template,
        fold_system(MESSAGES[:-1], role),
        add_generation_prompt=True,
        special_tokens=tok.special_tokens_map,
    )
    prompt, _ = encode(parts, lambda text: tok(text, add_special_tokens=False)["input_ids"])
    assert ids[: len(prompt)] == prompt and len(prompt) < len(ids)


def test_a_wrong_end_of_turn_token_would_be_caught(tokenizers):
    """Gemma's EOS is not its end-of-turn token: cutting replies at the EOS would train no stop at all."""
    tok = tokenizers("gemma2")
    assert tok.eos_token != "<end_of_turn>"
    parts = segments(
        tok.chat_template,
        fold_system(MESSAGES, "fold"),
        add_generation_prompt=False,
        special_tokens=tok.special_tokens_map,
    )
    assert [p.text for p in parts if p.reply] == [r + "<end_of_turn>" for r in REPLIES]


@pytest.mark.parametrize("name", ["gemma2", "mistral"])
def test_a_system_prompt_on_a_family_without_a_system_role_is_folded_into_the_first_user_turn(tokenizers, name):
    tok = tokenizers(name)
    assert families.system_role(tok.chat_template) == "fold"
    if name == "gemma2":  # the family's own template refuses a system turn
        with pytest.raises(Exception, match="System role not supported"):
            render(tok.chat_template, MESSAGES, add_generation_prompt=False, special_tokens=tok.special_tokens_map)
    ids, labels = tokenize(tok, MESSAGES)
    text = tok.decode(ids)
    assert "You are a terse assistant.\n\nHi there" in text and text.count("You are a terse assistant.") == 1
    with pytest.raises(SystemRoleError, match="no system role"):
        fold_system([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}], "fold")


def test_the_server_engine_takes_the_system_role_from_the_environment(monkeypatch):
    from chat_runtime import from_env

    monkeypatch.setenv("FINCH_SERVER_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("FINCH_SERVER_MODEL", "gemma")
    monkeypatch.setenv("FINCH_SYSTEM_ROLE", "fold")
    assert from_env().resolved().system_role == "fold"
    monkeypatch.setenv("FINCH_SYSTEM_ROLE", "maybe")
    with pytest.raises(ValueError, match="FINCH_SYSTEM_ROLE must be native or fold"):
        from_env().resolved()


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_each_family_has_a_recipe_that_parses_headed_by_its_command(repo_root, family):
    from finetune.config import parse

    path = repo_root / "training" / "recipes" / family.recipe
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(f"python training/train.py --config training/recipes/{family.recipe}" in line for line in header)
    config = parse(["--config", str(path)])
    margs, lora = config.parts()[:2]
    assert set(lora.lora_target_modules) == set(family.lora_target_modules)
    if family.name != "smollm2":
        assert margs.model.split("/")[0] in ("Qwen", "google", "microsoft", "mistralai", "HuggingFaceTB", "meta-llama")


@pytest.fixture(scope="module")
def family_reports(repo_root, tmp_path_factory):
    """scripts/family_check.py as a user runs it, for every family in one process (the libraries load
    once): the folder of each family's report."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("families")
    proc = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "family_check.py"), "all", str(out)],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    return out, proc


@pytest.mark.e2e
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("name", standin.FAMILY_NAMES)
def test_each_family_trains_exports_and_serves_with_the_ids_it_was_trained_on(family_reports, name):
    """A tiny stand-in of the family trained for two real steps by train.py's stages, exported to
    f16 + Q8_0 by llama.cpp's converter, decoded by llama.cpp; the prompts of both engines and of
    llama.cpp's own template rendering equal the training ids."""
    import json

    folder, proc = family_reports
    report_file = folder / name / "report.json"
    assert report_file.is_file(), proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    failed = [c for c in report["checks"] if not c["passed"]]
    assert not failed, (failed, proc.stdout[-500:])
    assert f"{name}: {len(report['checks'])}/{len(report['checks'])} checks passed" in proc.stdout
    names = {c["name"] for c in report["checks"]}
    assert {
        "trained",
        "exported",
        "gguf_stops_on_end_of_turn",
        "transformers_prompt_equals_training",
        "llamacpp_prompt_equals_training",
        "llamacpp_own_template_rendering_equals_training",
    } <= names
    assert report["family"] == name and report["messages"][0]["role"] == "system" and report["train_ids"]
    assert report["gguf"].endswith("-q8_0.gguf")


def test_the_merged_folder_tells_llamacpps_converter_which_tokens_are_control_tokens(tokenizers, tmp_path):
    """transformers 5 keeps added tokens in tokenizer.json only; llama.cpp's SentencePiece converter
    reads them from tokenizer_config.json, else `<end_of_turn>` becomes text and the GGUF never stops."""
    import json

    from gguf_export.merge import _write_added_tokens_decoder

    tok = tokenizers("gemma2")
    tok.save_pretrained(tmp_path)
    _write_added_tokens_decoder(tok, tmp_path)
    decoder = json.loads((tmp_path / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    eot = str(tok.convert_tokens_to_ids("<end_of_turn>"))
    assert decoder[eot]["content"] == "<end_of_turn>" and decoder[eot]["special"]


@pytest.mark.parametrize("name", standin.FAMILY_NAMES)
def test_the_training_ids_are_the_whole_conversation_tokenized_at_once(tokenizers, name):
    """What a server that renders the template itself sends: the rendered conversation tokenized in
    one piece. Phi-3's control tokens eat the newline after them in one piece; tokenized reply by
    reply, that newline would be a token training has and a server's prompt has not."""
    tok = tokenizers(name)
    messages = fold_system(MESSAGES, families.system_role(tok.chat_template))
    ids, _ = tokenize(tok, MESSAGES)
    text = render(tok.chat_template, messages, add_generation_prompt=False, special_tokens=tok.special_tokens_map)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
