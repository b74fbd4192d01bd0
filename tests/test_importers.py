"""arena_distill.importers on fixtures in the public formats' native forms (tests/fixtures/imports/): every row
accounted for, labels and turns as the format means them, deterministic ids, errors naming file/row/field,
and stage 2 taking an Arena file through ``format``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill import importers as imp
from arena_distill.sample_data import make_sample

FIX = Path(__file__).parent / "fixtures" / "imports"
KAGGLE = Path(__file__).parent / "fixtures" / "arena_messy.csv"


def _accounted(report: imp.ImportReport) -> None:
    assert report.rows_in == report.rows_out + sum(report.dropped.values())


def test_chatbot_arena_conversations_33k() -> None:
    df, rep = imp.read_preferences(FIX / "chatbot_arena_conversations.jsonl")
    assert rep.format == "arena_conversations" and (rep.rows_in, rep.rows_out, rep.dropped) == (5, 5, {})
    _accounted(rep)
    # model_b, tie, model_a, tie (bothbad) -> tie, model_a
    assert df["label"].tolist() == [1, 2, 0, 2, 0]
    multi = df[df["source_id"] == "90bfd142157948aba01931726c888e7f"].iloc[0]
    assert multi["n_turns"] == 2 and multi["prompt"] == "Fuji vs. Nikon, which is better?\nAnd for video?"
    assert multi["response_a"].endswith("\nFor video, Fuji's X-T4 is strong.")
    emoji = df[df["source_id"] == "adf27e819a3c494cb6e993f0c660e097"].iloc[0]
    assert emoji["prompt"] == "Emoji: 😀 and 中文?" and emoji["response_b"] == ""
    assert df["model_a"].iloc[0] == "chatglm-6b"

    dropped, rep2 = imp.read_preferences(FIX / "chatbot_arena_conversations.jsonl", both_bad="drop")
    assert (rep2.rows_out, rep2.dropped) == (4, {"both_bad": 1}) and 2 in dropped["label"].tolist()
    _accounted(rep2)


def test_arena_140k_typed_parts_jsonl_and_parquet(tmp_path: Path) -> None:
    df, rep = imp.read_preferences(FIX / "arena_human_preference_140k.jsonl")
    assert rep.format == "arena_55k" and (rep.rows_in, rep.rows_out) == (4, 4)
    assert df["label"].tolist() == [0, 2, 2, 1]  # both_bad -> tie
    assert rep.repairs == {"image_part_dropped": 2}  # the image part of the user turn, on both sides
    assert df["prompt"].iloc[3] == "What is in this picture?"
    assert df["prompt"].iloc[2] == "Write a haiku about rust.\nNow in French." and df["n_turns"].iloc[2] == 2
    # The same rows as parquet with the card's nested list<struct> types: numpy arrays inside, same result.
    records = [json.loads(line) for line in (FIX / "arena_human_preference_140k.jsonl").read_text().splitlines()]
    pd.DataFrame(records).to_parquet(tmp_path / "train.parquet", index=False)
    pq_df, pq_rep = imp.read_preferences(tmp_path / "train.parquet")
    assert pq_rep.format == "arena_55k"
    pd.testing.assert_frame_equal(pq_df, df)
    dropped, rep2 = imp.read_preferences(FIX / "arena_human_preference_140k.jsonl", both_bad="drop")
    assert rep2.dropped == {"both_bad": 1} and len(dropped) == 3


def test_arena_100k_conversations_as_json_strings() -> None:
    df, rep = imp.read_preferences(FIX / "arena_human_preference_100k.jsonl", format="arena_55k")
    assert (rep.rows_out, df["label"].tolist()) == (2, [0, 2])
    assert df["response_a"].tolist() == ["11", "No."] and df["prompt"].iloc[0] == "Name a prime > 10."


def test_kaggle_csv_is_read_as_before() -> None:
    from arena_distill import arena_text as at

    df, rep = imp.read_preferences(KAGGLE)
    ref = at.read_arena_csv(KAGGLE, kind="train", bad_json="repair")
    assert rep.format == "kaggle" and rep.rows_in == rep.rows_out == len(ref) == 30
    assert df["id"].tolist() == ref["id"].tolist() and df["prompt"].tolist() == ref["prompt"].tolist()
    assert not rep.hashed_ids and rep.repairs  # its counted repairs come along


def test_pairs_coin_flip_and_no_ties() -> None:
    df, rep = imp.read_preferences(FIX / "pairs.jsonl")
    assert (rep.rows_in, rep.rows_out, rep.dropped) == (4, 3, {"identical_responses": 1})
    assert set(df["label"]) <= {0, 1}
    chosen = {"p-1": "Paris.", "p-3": "[1,2,3]", "p-4": "It depends on your lifestyle."}
    for _, row in df.iterrows():
        assert (row["response_a"] if row["label"] == 0 else row["response_b"]) == chosen[row["source_id"]]
    assert df.set_index("source_id").loc["p-3", "prompt"] == "Sort [3,1,2]"  # prompt from the message list
    again, _ = imp.read_preferences(FIX / "pairs.jsonl")
    pd.testing.assert_frame_equal(df, again)
    flips = [imp.coin(2025, f"row{i}") for i in range(200)]
    assert 70 < sum(flips) < 130  # a fair coin, not a constant
    other_seed, _ = imp.read_preferences(FIX / "pairs.jsonl", seed=1)
    assert len(other_seed) == 3


def test_pairs_column_map_and_scoring_keeps_every_row(tmp_path: Path) -> None:
    src = tmp_path / "mine.jsonl"
    src.write_text("".join(json.dumps({"q": f"question {i}", "good": f"good {i}", "bad": "same" if i == 2 else f"bad {i}"})
                           + "\n" for i in range(4)))
    df, rep = imp.read_preferences(src, column_map={"q": "prompt", "good": "chosen", "bad": "rejected"},
                                   need_labels=False)
    assert rep.rows_out == 4 and df["source_id"].tolist() == ["1", "2", "3", "4"]  # row numbers, file order
    assert df["response_a"].tolist() == [f"good {i}" for i in range(4)]  # scoring: A = chosen, no flip
    with pytest.raises(imp.PreferenceImportError, match=r"column_map names column\(s\) \['nope'\]"):
        imp.read_preferences(src, column_map={"nope": "prompt"})


def test_ultrafeedback_to_ut_pairs() -> None:
    df, rep = imp.read_preferences(FIX / "ultrafeedback.jsonl")
    assert rep.format == "ultrafeedback"
    assert (rep.rows_in, rep.rows_out, rep.pairs_out) == (3, 2, 2)
    assert rep.dropped == {"fewer_than_two_rated": 1} and rep.repairs == {"unrated_completion": 2}
    _accounted(rep)
    every, rep_all = imp.read_preferences(FIX / "ultrafeedback.jsonl", ut_pairs="all")
    assert rep_all.pairs_out == 3 + 1  # 3 rated completions -> 3 pairs; 2 -> 1
    row = every[every["prompt"] == "2+3?"].iloc[0]  # 10 vs 1: the "5" side wins
    assert (row["label"] == 0) == (row["response_a"] == "5") and row["label"] in (0, 1)
    ties = every[(every["prompt"] == "Explain recursion.") & (every["label"] == 2)]
    assert sorted([ties.iloc[0]["response_a"], ties.iloc[0]["response_b"]]) == ["Loops.", "Recursion is recursion."]
    with pytest.raises(imp.PreferenceImportError, match="training data"):
        imp.read_preferences(FIX / "ultrafeedback.jsonl", need_labels=False)


def test_ids_deterministic_and_order_free(tmp_path: Path) -> None:
    lines = (FIX / "chatbot_arena_conversations.jsonl").read_text().splitlines()
    rev = tmp_path / "rev.jsonl"
    rev.write_text("\n".join(reversed(lines)) + "\n")
    a, rep = imp.read_preferences(FIX / "chatbot_arena_conversations.jsonl")
    b, _ = imp.read_preferences(rev)
    assert rep.hashed_ids and dict(zip(a["source_id"], a["id"])) == dict(zip(b["source_id"], b["id"]))
    assert a["id"].is_unique and (a["id"] < imp.ID_SPACE).all()
    ids, hashed = imp.integer_ids(["x"] * 2 + ["y"])
    assert hashed and ids[0] == ids[1] != ids[2]
    kept, hashed = imp.integer_ids(["12", "7"])
    assert kept.tolist() == [12, 7] and not hashed  # Kaggle's integer ids stay
    assert imp.integer_ids(["12", "007"])[1]  # "007" is not the integer 7's text: hashed
    imp.save_import_outputs(tmp_path, "train", a, rep)
    mapping = pd.read_csv(tmp_path / "train_id_map.csv", dtype={"source_id": str})
    assert len(mapping) == 5 and json.loads((tmp_path / "train_import.json").read_text())["rows_in"] == 5


def test_duplicates_dropped_or_renamed(tmp_path: Path) -> None:
    lines = (FIX / "chatbot_arena_conversations.jsonl").read_text().splitlines()
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(lines + [lines[0]]) + "\n")
    df, rep = imp.read_preferences(dup)
    assert (rep.rows_in, rep.rows_out, rep.dropped) == (6, 5, {"duplicate_row": 1})
    changed = json.loads(lines[0])
    changed["winner"] = "model_a"
    clash = tmp_path / "clash.jsonl"
    clash.write_text("\n".join(lines + [json.dumps(changed)]) + "\n")
    both, rep_c = imp.read_preferences(clash)  # one id, two battles: both kept, the later renamed (counted)
    assert rep_c.rows_out == 6 and rep_c.repairs == {"duplicate_id_renamed": 1} and both["id"].is_unique
    assert both["source_id"].iloc[-1] == "58210e39b3fd4441a2bd4a518bb44c2d#2" and both["label"].iloc[-1] == 0
    scored, rep_s = imp.read_preferences(dup, need_labels=False)  # scoring: every row out, in order
    assert rep_s.rows_out == 6 and scored["source_id"].iloc[-1] == scored["source_id"].iloc[0]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(winner="model_c"), r"line 2, field 'winner': 'model_c' is not one of"),
    (lambda r: r.update(winner=None), r"line 2, field 'winner': missing"),
    (lambda r: r.update(conversation_a={"role": "user"}), r"line 2, field 'conversation_a': expected a list"),
    (lambda r: r.update(conversation_b="not json"), r"line 2, field 'conversation_b': not a list of messages"),
    (lambda r: r["conversation_a"][0].update(role="narrator"), r"line 2, field 'conversation_a'\[0\]\.role: unknown"),
    (lambda r: r["conversation_a"][1].update(content=42), r"line 2, field 'conversation_a'\[1\]\.content: content"),
])
def test_bad_rows_name_file_row_field(tmp_path: Path, edit, message) -> None:
    lines = (FIX / "chatbot_arena_conversations.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    edit(row)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(row)] + lines[2:]) + "\n")
    with pytest.raises(imp.PreferenceImportError, match=message) as err:
        imp.read_preferences(bad)
    assert str(bad) in str(err.value)


def test_unknown_layout_and_bad_json_line(tmp_path: Path) -> None:
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"text": "x", "score": 1}) + "\n")
    with pytest.raises(imp.FileFormatError, match="cannot tell the format"):
        imp.read_preferences(odd)
    broken = tmp_path / "broken.jsonl"
    broken.write_text((FIX / "pairs.jsonl").read_text() + '{"id": "p-5", "prompt": \n')
    with pytest.raises(imp.PreferenceImportError, match=r"broken.jsonl: line 5 is not valid JSON"):
        imp.read_preferences(broken)


def test_stage2_takes_arena_and_ultrafeedback_files(tmp_path: Path, stage_module, tiny_models_root) -> None:
    """Kaggle train + the public 33k (Arena JSONL) + UltraFeedback as the UT set, through prepare.format keys."""
    stage = stage_module("02_prepare_data")
    files, _ = make_sample(n_train=60, n_test=5, n_33k=0, n_ut=0, seed=3)
    data = tmp_path / "data"
    data.mkdir()
    files["train"].to_csv(data / "train.csv", index=False)
    shutil.copy(FIX / "chatbot_arena_conversations.jsonl", data / "c33k.jsonl")
    shutil.copy(FIX / "ultrafeedback.jsonl", data / "uf.jsonl")
    profile = tmp_path / "p.yaml"
    profile.write_text(
        f"common:\n  seed: 5\n  n_folds: 2\n  data_dir: {data}\n  processed_dir: {tmp_path / 'processed'}\n"
        f"  model_dir: {tiny_models_root}\n  teachers: []\n  student: tiny_llama\n"
        f"prepare:\n  folds_csv: {tmp_path / 'folds.csv'}\n  max_length: 96\n  prompt_max_tokens: 24\n"
        f"  extra_33k_csv: {data / 'c33k.jsonl'}\n  extra_33k_format: arena_conversations\n  both_bad: drop\n"
        f"  extra_ut_csv: {data / 'uf.jsonl'}\n  extra_ut_format: ultrafeedback\n")
    assert stage.main(["--config", str(profile)]) == 0
    processed = tmp_path / "processed"
    report = json.loads((processed / "report.json").read_text())
    assert report["imports"]["33k"]["dropped"] == {"both_bad": 1} and report["imports"]["33k"]["rows_out"] == 4
    assert report["imports"]["ut"]["pairs_out"] == 2 and report["rows_in"] == {"train": 60, "33k": 4, "ut": 2}
    ut = pd.read_parquet(processed / "tiny_llama_ut" / "train.parquet")
    assert len(ut) == 2 * 2  # two UT pairs, each also A/B swapped
    fold0 = pd.read_parquet(processed / "tiny_llamafold0" / "train.parquet")
    assert (fold0["source"] == "33k").sum() == 2 * 4
    id_map = pd.read_csv(processed / "33k_id_map.csv", dtype={"source_id": str})
    assert len(id_map) == 4 and id_map["id"].min() >= 10**12  # stage 2's extra-data id range


def test_json_lines_under_json_name_and_byte_order_mark(tmp_path: Path) -> None:
    """`datasets.Dataset.to_json` writes JSON Lines named .json; Windows tools add a byte-order mark."""
    text = (FIX / "chatbot_arena_conversations.jsonl").read_text(encoding="utf-8")
    (tmp_path / "export.json").write_text(text, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    records = [json.loads(line) for line in text.splitlines()]
    (tmp_path / "array.json").write_text(json.dumps(records), encoding="utf-8")
    ref, _ = imp.read_preferences(FIX / "chatbot_arena_conversations.jsonl")
    for name in ("export.json", "bom.jsonl", "array.json"):
        df, rep = imp.read_preferences(tmp_path / name)
        assert rep.rows_out == 5, name
        pd.testing.assert_frame_equal(df, ref)


def test_arena_battles_saved_as_csv(tmp_path: Path) -> None:
    """An Arena dump exported to CSV keeps its conversations as JSON strings: read as battles, not as Kaggle."""
    records = [json.loads(line) for line in (FIX / "chatbot_arena_conversations.jsonl").read_text().splitlines()]
    frame = pd.DataFrame(records)
    for col in ("conversation_a", "conversation_b", "openai_moderation", "toxic_chat_tag"):
        frame[col] = frame[col].map(json.dumps)
    frame.to_csv(tmp_path / "battles.csv", index=False)
    df, rep = imp.read_preferences(tmp_path / "battles.csv")
    ref, _ = imp.read_preferences(FIX / "chatbot_arena_conversations.jsonl")
    assert rep.format == "arena_conversations"
    pd.testing.assert_frame_equal(df, ref)
