"""Vote rows (the contract preference training reads) and where they are kept: a local JSONL file,
and on a Space a folder that huggingface_hub's CommitScheduler uploads to a Hub dataset."""

import json

import pytest

from chat_runtime import GenerationParams
from chat_runtime.votes import VoteStore, compare_row, like_row, liked_turn

PARAMS = GenerationParams(temperature=0.0, top_p=0.9, max_new_tokens=32, repetition_penalty=1.1)
PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]


def test_a_compare_vote_is_one_row_of_the_contract(tmp_path):
    store = VoteStore(tmp_path / "votes.jsonl")
    store.add(compare_row(PROMPT, ("tuned", "Paris."), ("base", "Lyon."), "left", PARAMS))
    (row,) = [json.loads(line) for line in (tmp_path / "votes.jsonl").read_text().splitlines()]
    assert row["kind"] == "compare" and row["prompt"] == PROMPT and row["choice"] == "left"
    assert row["left"] == {"model": "tuned", "reply": "Paris."} and row["right"] == {"model": "base", "reply": "Lyon."}
    assert row["settings"] == {"temperature": 0.0, "top_p": 0.9, "max_new_tokens": 32, "repetition_penalty": 1.1}
    assert row["time"].endswith("+00:00")  # ISO 8601, UTC
    with pytest.raises(ValueError, match="choice must be one of left, right, tie"):
        compare_row(PROMPT, ("a", "x"), ("b", "y"), "both", PARAMS)


def test_a_like_takes_the_conversation_before_the_reply():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    prompt, reply = liked_turn(history, 3, "Be brief.")
    assert prompt == [{"role": "system", "content": "Be brief."}, *history[:3]] and reply == "Paris."
    row = like_row(prompt, reply, "tuned", False, PARAMS)
    assert row["kind"] == "dislike" and row["reply"] == "Paris." and row["model"] == "tuned"
    assert set(row) == {"kind", "prompt", "reply", "model", "settings", "time"}
    with pytest.raises(ValueError, match="no message at index 9"):
        liked_turn(history, 9, None)


def test_on_a_space_votes_also_go_to_the_folder_the_scheduler_uploads(tmp_path, monkeypatch, caplog):
    # Offline (as in every test), the scheduler cannot create the dataset: the votes stay whole locally,
    # in the file and in the folder it would upload, and the page says where they are kept.
    monkeypatch.setenv("FINCH_VOTES_FILE", str(tmp_path / "votes.jsonl"))
    monkeypatch.setenv("FINCH_VOTES_DATASET", "you/finch-votes")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    store = VoteStore.from_env()
    assert store.scheduler is None and "not be uploaded to the dataset you/finch-votes" in caplog.text
    assert "hf_secret_token_value" not in caplog.text
    store.add(compare_row(PROMPT, ("tuned", "Paris."), ("base", "Lyon."), "tie", PARAMS))
    (upload,) = (tmp_path / "votes_upload").glob("votes-*.jsonl")
    assert (
        upload.read_text() == (tmp_path / "votes.jsonl").read_text()
        and json.loads(upload.read_text())["choice"] == "tie"
    )
    assert "collected" in store.notice
