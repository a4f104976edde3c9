"""Preference data: every format, every kind of bad row (dropped and counted by reason), the vote
rows the chatbot writes, SFT on a preference set's chosen side, and the token ids DPO trains on."""

import json

import pytest

from finetune import data, preference, preference_tokens

USER = [{"role": "user", "content": "What is 2 + 2?"}]
HH_PROMPT = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2 + 2?\n\nAssistant:"
GOOD = {
    "preference": {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "Five, probably."},
    "hh": {"chosen": HH_PROMPT + " 4.", "rejected": HH_PROMPT + " Five, probably."},
    "ultrafeedback": {
        "prompt": "What is 2 + 2?",
        "chosen": USER + [{"role": "assistant", "content": "4."}],
        "rejected": USER + [{"role": "assistant", "content": "Five, probably."}],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    },
    "votes": {
        "kind": "compare",
        "prompt": USER,
        "left": {"model": "a", "reply": "Five, probably."},
        "right": {"model": "b", "reply": "4."},
        "choice": "right",
        "settings": {"temperature": 0.7},
        "time": "2026-12-02T06:00:00Z",
    },
}


def vote(kind, reply, prompt=USER, **extra):
    """A like/dislike row exactly as the chatbot writes it."""
    return {
        "kind": kind,
        "prompt": prompt,
        "reply": reply,
        "model": "finch",
        "settings": {"temperature": 0.7},
        "time": "2026-12-02T06:00:00Z",
        **extra,
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("fmt", list(GOOD))
def test_each_preference_format_is_detected_and_read_as_prompt_chosen_rejected(fmt):
    assert preference.detect(list(GOOD[fmt])) == fmt
    pairs, dropped = preference.to_pairs([GOOD[fmt]], fmt)
    assert dropped == {} and len(pairs) == 1
    assert pairs[0].prompt[-1] == USER[0] and pairs[0].chosen == "4." and pairs[0].rejected == "Five, probably."


def test_hh_keeps_the_earlier_turns_in_the_prompt():
    (pair,), _ = preference.to_pairs([GOOD["hh"]], "hh")
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.prompt[1]["content"] == "Hello! How can I help?"


@pytest.mark.parametrize(
    "row",
    [
        {
            "prompt": USER,
            "chosen": [{"role": "assistant", "content": "4."}],
            "rejected": [{"role": "assistant", "content": "Five, probably."}],
        },  # trl's conversational form
        {
            "chosen": USER + [{"role": "assistant", "content": "4."}],
            "rejected": USER + [{"role": "assistant", "content": "Five, probably."}],
            "prompt": None,
        },  # implicit prompt
    ],
)
def test_message_list_sides_are_read(row):
    (pair,), dropped = preference.to_pairs([row], "preference")
    assert dropped == {} and (pair.chosen, pair.rejected) == ("4.", "Five, probably.")


BAD = [
    ({"prompt": "Hi", "chosen": "Same.", "rejected": "Same. "}, "preference", "identical chosen and rejected"),
    ({"prompt": "Hi", "chosen": "", "rejected": "No."}, "preference", "empty chosen"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": "   "}, "preference", "empty rejected"),
    ({"prompt": "Hi", "chosen": [], "rejected": "No."}, "preference", "empty chosen"),
    (
        {"chosen": HH_PROMPT + " 4.", "rejected": "\n\nHuman: Something else\n\nAssistant: 5."},
        "hh",
        "prompt differs between the two sides",
    ),
    ({"chosen": HH_PROMPT + " 4.", "rejected": HH_PROMPT}, "hh", "empty rejected"),
    (
        {
            **GOOD["ultrafeedback"],
            "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "5."}],
        },
        "ultrafeedback",
        "prompt differs between the two sides",
    ),
    ({**GOOD["ultrafeedback"], "score_rejected": 9.0}, "ultrafeedback", "tie"),
    (
        {
            "prompt": None,
            "chosen": USER + [{"role": "assistant", "content": "4."}],
            "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "5."}],
        },
        "preference",
        "prompt differs between the two sides",
    ),
    ({**GOOD["votes"], "choice": "tie"}, "votes", "tie"),
    ({**GOOD["votes"], "left": {"model": "a", "reply": "4."}}, "votes", "identical chosen and rejected"),
]


@pytest.mark.parametrize("row, fmt, reason", BAD, ids=[f"{fmt}: {reason}" for _, fmt, reason in BAD])
def test_each_bad_row_kind_is_dropped_and_counted_by_reason(row, fmt, reason):
    pairs, dropped = preference.to_pairs([row, GOOD[fmt]], fmt)
    assert len(pairs) == 1 and dropped == {reason: 1}


def test_a_liked_and_a_disliked_reply_to_the_same_prompt_pair_up_and_the_rest_is_counted():
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    rows = [
        vote("dislike", "Five, probably."),
        vote("like", "4."),  # a disliked reply, then a liked Retry
        vote("like", "Blue."),
        vote("like", "Red.", prompt=other),
        vote("dislike", "I cannot.", prompt=other),
        vote("dislike", "Green, or maybe not.", prompt=other),
    ]
    pairs, dropped = preference.to_pairs(rows, "votes")
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("4.", "Five, probably."), ("Red.", "I cannot.")]
    assert dropped == {"unpaired like/dislike": 2}
    assert next(p for p in pairs if p.chosen == "Red.").prompt == other  # the system prompt stays with it


def test_compare_rows_follow_the_choice():
    (pair,), _ = preference.to_pairs([{**GOOD["votes"], "choice": "left"}], "votes")
    assert (pair.chosen, pair.rejected) == ("Five, probably.", "4.")


def test_a_votes_file_loads_with_its_mixed_row_kinds(tmp_path):
    path = write_jsonl(
        tmp_path / "votes.jsonl",
        [
            GOOD["votes"],
            vote("dislike", "Five."),
            vote("like", "4."),
            {**GOOD["votes"], "choice": "tie"},
            vote("like", "Alone.", prompt=[{"role": "user", "content": "Say something."}]),
        ],
    )
    prepared = data.prepare([path], ["auto"], [1.0], 0.0, 1, converter=preference.convert, expected=preference.expected)
    assert len(prepared.train) == 2 and prepared.dropped == {"tie": 1, "unpaired like/dislike": 1}
    assert set(prepared.train.column_names) == {"prompt", "chosen", "rejected"}


def test_a_set_without_usable_pairs_fails_with_the_reasons_and_the_formats(tmp_path):
    path = write_jsonl(tmp_path / "ties.jsonl", [{**GOOD["votes"], "choice": "tie"}] * 3)
    with pytest.raises(ValueError) as err:
        data.prepare([path], ["auto"], [1.0], 0.1, 1, converter=preference.convert, expected=preference.expected)
    assert (
        "no usable rows" in str(err.value)
        and "'tie': 3" in str(err.value)
        and "hh (chosen + rejected)" in str(err.value)
    )


def test_sft_on_a_preference_set_trains_the_chosen_transcript(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [GOOD["hh"], {**GOOD["hh"], "rejected": GOOD["hh"]["chosen"]}])
    prepared = data.prepare([path], ["auto"], [1.0], 0.0, 1)
    assert prepared.dropped == {"identical chosen and rejected": 1}
    (messages,) = prepared.train["messages"]
    assert messages[-1] == {"role": "assistant", "content": "4."} and messages[-2]["content"] == "What is 2 + 2?"


def test_pairs_tokenize_like_sft_with_the_reply_and_its_end_of_turn_as_the_completion(embedded_hf):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from finetune import masking

    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    pairs, _ = preference.convert(Dataset.from_list([GOOD["preference"]]), "auto")
    (row,), dropped = preference_tokens.tokenize(pairs, tokenizer, 256)
    assert dropped == {}
    assert tokenizer.decode(row["chosen_ids"]) == "4.<|im_end|>"  # the end-of-turn token is in the completion
    assert tokenizer.decode(row["rejected_ids"]) == "Five, probably.<|im_end|>"
    sft, _ = masking.tokenize(
        Dataset.from_dict({"messages": [USER + [{"role": "assistant", "content": "4."}]]}), tokenizer, 256
    )
    ids, labels = sft[0]["input_ids"], sft[0]["labels"]
    trained = [i for i, label in zip(ids, labels) if label != masking.IGNORE]
    assert row["prompt_ids"] + row["chosen_ids"] == ids[: len(row["prompt_ids"]) + len(row["chosen_ids"])]
    assert row["chosen_ids"] == trained  # the very ids SFT puts the loss on


def test_a_pair_whose_prompt_fills_max_seq_length_is_dropped_and_counted(embedded_hf):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_hf)
    pairs, _ = preference.convert(
        Dataset.from_list([GOOD["preference"], {**GOOD["preference"], "prompt": "word " * 300}]), "auto"
    )
    tokenized, dropped = preference_tokens.tokenize(pairs, tokenizer, 128)
    assert len(tokenized) == 1 and dropped == {"prompt fills max_seq_length": 1}
