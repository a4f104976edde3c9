"""Data preparation: every format, every kind of bad row, mixtures, and the failure that comes
before any model is loaded."""

import json

import pytest

from finetune import data

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


GOOD = {
    "sharegpt": {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
        ]
    },
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    "alpaca": {"instruction": "Translate", "input": "hello", "output": "ನಮಸ್ಕಾರ"},
    "prompt_response": {"prompt": "Hi", "response": "Hello!"},
}


@pytest.mark.parametrize("fmt", list(GOOD))
def test_each_format_is_detected_and_converted(fmt):
    assert data.detect_format(list(GOOD[fmt])) == fmt
    messages = data.to_messages(GOOD[fmt], fmt)
    assert messages[-1]["role"] == "assistant" and any(m["role"] == "user" for m in messages)


def test_alpaca_input_is_appended_to_the_instruction():
    assert data.to_messages(GOOD["alpaca"], "alpaca")[0]["content"] == "Translate\n\nhello"
    no_input = {"instruction": "Say hi", "input": "", "output": "hi"}
    assert data.to_messages(no_input, "alpaca")[0]["content"] == "Say hi"


@pytest.mark.parametrize(
    "row, fmt, reason",
    [
        (
            {"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "x"}]},
            "sharegpt",
            "empty turn",
        ),
        (
            {"conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "x"}]},
            "sharegpt",
            "unknown role 'alien'",
        ),
        ({"conversations": [{"value": "x"}]}, "sharegpt", "missing from"),
        (
            {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
            "sharegpt",
            "turn is not text",
        ),
        ({"conversations": "not a list"}, "sharegpt", "no turns"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt", "does not end with the assistant"),
        ({"conversations": [{"from": "gpt", "value": "hi"}]}, "sharegpt", "no user turn"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
            "messages",
            "system turn after the start",
        ),
        ({"instruction": "x", "output": None}, "alpaca", "missing output"),
        ({"instruction": "x", "input": 5, "output": "y"}, "alpaca", "input is not text"),
        ({"prompt": "x", "response": ""}, "prompt_response", "empty response"),
    ],
)
def test_bad_rows_say_why(row, fmt, reason):
    with pytest.raises(data.BadRow, match=reason):
        data.to_messages(row, fmt)


def test_bad_rows_are_dropped_counted_and_summarised(tmp_path):
    rows = [GOOD["sharegpt"]] * 3 + [
        {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "hi"}]},
        {"conversations": [{"from": "human", "value": "hi"}]},
    ]
    prepared = data.prepare([write_jsonl(tmp_path / "d.jsonl", rows)], ["auto"], [1.0], 0.0, seed=1)
    assert len(prepared.train) == 3 and prepared.eval is None
    assert prepared.dropped == {"empty turn": 1, "does not end with the assistant": 2}
    assert prepared.sources[0] == {
        "dataset": str(tmp_path / "d.jsonl"),
        "rows": 6,
        "usable": 3,
        "weight": 1.0,
        "dropped": {"empty turn": 1, "does not end with the assistant": 2},
    }


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".csv"])
def test_local_files_of_every_kind_load(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)])
    path = tmp_path / f"d{suffix}"
    {
        ".json": lambda: frame.to_json(path, orient="records"),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".parquet": lambda: frame.to_parquet(path),
        ".csv": lambda: frame.to_csv(path, index=False),
    }[suffix]()
    prepared = data.prepare([str(path)], ["auto"], [1.0], 0.2, seed=1)
    assert len(prepared.train) == 4 and len(prepared.eval) == 1


def test_a_mixture_takes_each_source_by_weight(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD["sharegpt"]] * 10)
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD["alpaca"]] * 10)
    prepared = data.prepare([a, b], ["sharegpt", "alpaca"], [1.0, 0.5], 0.0, seed=1)
    firsts = [m[0]["content"] for m in prepared.train["messages"]]
    assert len(firsts) == 15 and firsts.count("Translate\n\nhello") == 5
    doubled = data.prepare([b], ["auto"], [2.0], 0.0, seed=1)
    assert len(doubled.train) == 20


def test_no_usable_row_fails_naming_the_columns_found_and_expected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError) as err:
        data.prepare([path], ["auto"], [1.0], 0.1, seed=1)
    assert "columns found: ['answer', 'question']" in str(err.value) and "sharegpt (conversations)" in str(err.value)
    only_bad = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "", "response": "x"}])
    with pytest.raises(ValueError, match="no usable rows"):
        data.prepare([only_bad], ["auto"], [1.0], 0.1, seed=1)


def test_mismatched_lists_and_missing_files_are_clear(tmp_path):
    with pytest.raises(ValueError, match="2 datasets but 3 formats"):
        data.prepare(["a.jsonl", "b.jsonl"], ["auto"] * 3, [1.0], 0.0, seed=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.prepare([str(tmp_path / "missing.jsonl")], ["auto"], [1.0], 0.0, seed=1)
    with pytest.raises(RuntimeError, match="could not load dataset 'someone/data'"):
        data.prepare(["someone/data"], ["auto"], [1.0], 0.0, seed=1)  # offline in tests
