"""Stage 2 (src/02_prepare_data.py) run through its real entry point on temp dirs: the output contract,
folds (stratified, grouped duplicates, deterministic, written once), skip/force, and every bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from arena_distill import arena_text as at
from arena_distill.io import StageInputError
from arena_distill.sample_data import make_sample

FIXTURE = Path(__file__).parent / "fixtures" / "arena_messy.csv"
MODELS = ["tiny_llama", "tiny_gemma2"]
MAX_LEN = 128


@pytest.fixture(scope="module")
def stage(stage_module):
    return stage_module("02_prepare_data")


@pytest.fixture(scope="module")
def sample_files() -> dict[str, pd.DataFrame]:
    files, _ = make_sample(n_train=300, n_test=10, n_33k=60, n_ut=60, seed=11)
    return files


def _workspace(root: Path, files: dict[str, pd.DataFrame], model_root: Path, n_folds: int = 5) -> Path:
    """A data dir with the sample CSVs and a profile YAML pointing every path into ``root``."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("train", "extra_33k", "extra_ut"):
        files[name].to_csv(data / f"{name}.csv", index=False)
    profile = root / "profile.yaml"
    profile.write_text(
        f"common:\n  seed: 5\n  n_folds: {n_folds}\n  data_dir: {data}\n  processed_dir: {root / 'processed'}\n"
        f"  model_dir: {model_root}\n  teachers: [{MODELS[0]}]\n  student: {MODELS[1]}\n"
        f"prepare:\n  folds_csv: {root / 'folds.csv'}\n  max_length: {MAX_LEN}\n  prompt_max_tokens: 32\n")
    return profile


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, stage, sample_files, tiny_models_root) -> Path:
    root = tmp_path_factory.mktemp("prep")
    profile = _workspace(root, sample_files, tiny_models_root)
    assert stage.main(["--config", str(profile)]) == 0
    return root


def _read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


# --------------------------------------------------------------------------------------------------
# Output contract

def test_output_contract(done_run: Path, sample_files) -> None:
    train = sample_files["train"]
    processed = done_run / "processed"
    expected = {f"{m}fold{k}" for m in MODELS for k in range(5)} | {f"{m}_ut" for m in MODELS}
    assert {p.name for p in processed.iterdir() if p.is_dir()} == expected
    folds = pd.read_csv(done_run / "folds.csv")
    assert list(folds.columns) == ["id", "fold"] and sorted(folds["id"]) == sorted(train["id"])
    labels = dict(zip(train["id"], train[list(at.LABEL_COLUMNS)].to_numpy().argmax(axis=1)))
    for m in MODELS:
        dev_ids = []
        for k in range(5):
            folder = processed / f"{m}fold{k}"
            assert {"train.parquet", "dev.parquet", "config.yaml", "DONE.json"} <= {p.name for p in folder.iterdir()}
            schema = pq.read_schema(folder / "train.parquet")
            assert [(f.name, str(f.type)) for f in schema] == [
                ("id", "int64"), ("swap", "bool"), ("label", "int8"), ("input_ids", "list<element: int32>"),
                ("length", "int32"), ("source", "string")]
            tr, dv = _read(folder / "train.parquet"), _read(folder / "dev.parquet")
            # dev: this fold's train rows only, original orientation, labels as in the CSV
            assert (~dv["swap"]).all() and set(dv["source"]) == {"train"}
            assert set(dv["id"]) == set(folds.loc[folds["fold"] == k, "id"])
            assert all(labels[i] == lab for i, lab in zip(dv["id"], dv["label"]))
            dev_ids += dv["id"].tolist()
            # train: the other folds + swapped copies + 33k rows, never a dev id
            assert not set(tr["id"]) & set(dv["id"])
            assert set(tr["source"]) == {"train", "33k"}
            kag = tr[tr["source"] == "train"]
            assert set(kag["id"]) == set(folds.loc[folds["fold"] != k, "id"])
            orig, swp = kag[~kag["swap"]].set_index("id"), kag[kag["swap"]].set_index("id")
            assert len(orig) == len(swp) and (swp.loc[orig.index, "label"].to_numpy()
                                              == at.swap_label(orig["label"].to_numpy())).all()
            assert (tr.loc[tr["source"] == "33k", "id"] >= 10**12).all()
            for df in (tr, dv):
                assert (df["length"] == df["input_ids"].map(len)).all() and df["length"].max() <= MAX_LEN
        assert sorted(dev_ids) == sorted(train["id"])  # every row in exactly one dev split
        ut = _read(processed / f"{m}_ut" / "train.parquet")
        assert set(ut["source"]) == {"ut"} and ut["swap"].any() and (ut["id"] >= 2 * 10**12).all()


def test_ids_are_the_library_encoding(done_run: Path, tiny_models_root: Path) -> None:
    """Stage output == arena_text.encode_batch on the parsed CSV rows (both orientations)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models_root / "tiny_gemma2"))
    parsed = at.read_arena_csv(done_run / "data" / "train.csv", kind="train").set_index("id")
    tr = _read(done_run / "processed" / "tiny_gemma2fold0" / "train.parquet")
    tr = tr[tr["source"] == "train"].head(40)
    rows = parsed.loc[tr["id"]]
    a = np.where(tr["swap"], rows["response_b"], rows["response_a"]).tolist()
    b = np.where(tr["swap"], rows["response_a"], rows["response_b"]).tolist()
    ids = at.encode_batch(tok, rows["prompt"].tolist(), a, b, max_length=MAX_LEN, prompt_max_tokens=32)
    assert [list(x) for x in tr["input_ids"]] == ids
    assert all(x[-1] == tok.eos_token_id for x in ids)
    # Gemma-2 / Llama-3 tokenizers put BOS first (tokenizer(text) does): every processed row starts with it
    for m in MODELS:
        t = AutoTokenizer.from_pretrained(str(tiny_models_root / m))
        for split in ("train", "dev"):
            rows = _read(done_run / "processed" / f"{m}fold0" / f"{split}.parquet")["input_ids"]
            assert t.bos_token_id is not None and all(x[0] == t.bos_token_id for x in rows), (m, split)


def test_report(done_run: Path) -> None:
    report = json.loads((done_run / "processed" / "report.json").read_text())
    assert report["rows_in"] == {"train": 300, "33k": 60, "ut": 60}
    assert report["rows_out"]["folds_dev_total"] == 300
    assert report["rows_out"]["extra_used"]["33k"] == 60  # the whole 33k file, as the seed
    assert report["removed"]["ut_duplicate_id"] == 0 and "33k_prompt_in_train" not in report["removed"]
    assert report["repairs"]["train"]["null_turn"] > 0
    for m in MODELS:
        s = report["models"][m]
        assert s["length_percentiles"]["p100"] <= MAX_LEN and 0 <= s["token_truncated_rate"] <= 1
    md = (done_run / "processed" / "report.md").read_text()
    assert "| fold | dev A | dev B | dev tie |" in md and "tiny_gemma2" in md


def test_folds_stratified_and_duplicates_grouped(done_run: Path, sample_files) -> None:
    train = sample_files["train"]
    folds = pd.read_csv(done_run / "folds.csv").set_index("id")
    label = train[list(at.LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    fold = folds.loc[train["id"], "fold"].to_numpy()
    for c in range(3):
        counts = np.bincount(fold[label == c], minlength=5)
        assert counts.max() - counts.min() <= 3, (c, counts)
    dup = train.duplicated(subset=["prompt", "response_a", "response_b"], keep=False)
    assert dup.any()
    key = train.loc[dup, "prompt"] + train.loc[dup, "response_a"] + train.loc[dup, "response_b"]
    assert (pd.Series(fold[dup.to_numpy()], index=key.index).groupby(key).nunique() == 1).all()


def test_folds_deterministic(tmp_path: Path, done_run: Path, stage, sample_files, tiny_models_root) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    assert stage.main(["--config", str(profile), "models=tiny_gemma2", "use_ut=false"]) == 0
    assert (tmp_path / "folds.csv").read_bytes() == (done_run / "folds.csv").read_bytes()
    a = _read(tmp_path / "processed" / "tiny_gemma2fold2" / "train.parquet")
    b = _read(done_run / "processed" / "tiny_gemma2fold2" / "train.parquet")
    assert a.equals(b)


# --------------------------------------------------------------------------------------------------
# Skip, force, stale settings, folds written once

def test_skip_force_and_stale(tmp_path: Path, stage, sample_files, tiny_models_root) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    args = ["--config", str(profile), "models=tiny_gemma2", "use_33k=false", "use_ut=false"]
    assert stage.main(args) == 0
    target = tmp_path / "processed" / "tiny_gemma2fold0" / "train.parquet"
    mtime, folds_mtime = target.stat().st_mtime_ns, (tmp_path / "folds.csv").stat().st_mtime_ns
    assert stage.main(args) == 0 and target.stat().st_mtime_ns == mtime  # skipped
    with pytest.raises(StageInputError, match="other settings.*max_length"):
        stage.main(args + ["max_length=96"])
    assert stage.main(args + ["max_length=96", "force=true", "swap_augment=false", "truncation_side=left"]) == 0
    tr = _read(target)
    assert target.stat().st_mtime_ns != mtime and not tr["swap"].any() and tr["length"].max() <= 96
    assert (tmp_path / "folds.csv").stat().st_mtime_ns == folds_mtime  # folds reused, not rewritten


def test_folds_mismatch_is_an_error(tmp_path: Path, stage, sample_files, tiny_models_root) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    folds = pd.DataFrame({"id": sample_files["train"]["id"].iloc[1:], "fold": 0})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(StageInputError, match="does not match.*1 train ids missing"):
        stage.main(["--config", str(profile)])
    assert not (tmp_path / "processed").exists()


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error naming file / row / column, nothing written

def _mutate_missing_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="winner_tie")


def _mutate_non_json(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, "response_b"] = "['python repr', None]"
    return df


def _mutate_onehot_sum(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, ["winner_model_a", "winner_model_b", "winner_tie"]] = [1, 1, 0]
    return df


def _mutate_nan_label(df: pd.DataFrame) -> pd.DataFrame:
    df["winner_model_b"] = df["winner_model_b"].astype(object)
    df.loc[5, "winner_model_b"] = ""
    return df


def _mutate_duplicate_id(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[7, "id"] = df.loc[6, "id"]
    return df


@pytest.mark.parametrize("mutate, pattern", [
    (_mutate_missing_column, r"train\.csv: missing column\(s\) \['winner_tie'\]"),
    (_mutate_non_json, r"train\.csv: id {id3}, column 'response_b': not a JSON list"),
    (_mutate_onehot_sum, r"train\.csv: id {id4}, columns .* sums to 2"),
    (_mutate_nan_label, r"train\.csv: id {id5}, column 'winner_model_b': label is missing"),
    (_mutate_duplicate_id, r"train\.csv: column 'id': duplicate id\(s\) \[{id6}\]"),
])
def test_bad_input_errors_and_writes_nothing(tmp_path: Path, stage, sample_files, tiny_models_root,
                                             mutate, pattern: str) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    train = sample_files["train"].copy()
    ids = {f"id{i}": train["id"].iloc[i] for i in range(8)}
    mutate(train).to_csv(tmp_path / "data" / "train.csv", index=False)
    with pytest.raises(at.ArenaParseError, match=pattern.format(**ids)):
        stage.main(["--config", str(profile), "bad_json=error"])
    assert not (tmp_path / "processed").exists() and not (tmp_path / "folds.csv").exists()


def test_non_json_repair_is_counted_not_dropped(tmp_path: Path, stage, sample_files, tiny_models_root) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    _mutate_non_json(sample_files["train"].copy()).to_csv(tmp_path / "data" / "train.csv", index=False)
    assert stage.main(["--config", str(profile), "bad_json=repair", "models=tiny_gemma2", "use_ut=false"]) == 0
    report = json.loads((tmp_path / "processed" / "report.json").read_text())
    assert report["repairs"]["train"]["non_json_cell"] == 1 and report["rows_out"]["folds_dev_total"] == 300


@pytest.mark.parametrize("what, pattern", [
    ("train", r"missing train file: .*train\.csv -> run first: python src/00_make_sample_data\.py"),
    ("tokenizer", r"missing tokenizer of model 'tiny_gemma2'.* -> run first: python src/01_build_tiny_models\.py"),
])
def test_missing_inputs_say_what_to_run(tmp_path: Path, stage, sample_files, tiny_models_root, what, pattern) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models_root / "tiny_llama", models / "tiny_llama")
    profile = _workspace(tmp_path, sample_files, models if what == "tokenizer" else tiny_models_root)
    if what == "train":
        (tmp_path / "data" / "train.csv").unlink()
    with pytest.raises(StageInputError, match=pattern):
        stage.main(["--config", str(profile)])
    assert not (tmp_path / "processed").exists() and not (tmp_path / "folds.csv").exists()


def test_missing_extra_data_is_a_warning(tmp_path: Path, stage, sample_files, tiny_models_root, capsys) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    (tmp_path / "data" / "extra_33k.csv").unlink()
    (tmp_path / "data" / "extra_ut.csv").unlink()
    assert stage.main(["--config", str(profile), "models=tiny_gemma2"]) == 0
    assert "extra_33k.csv not found" in capsys.readouterr().err
    report = json.loads((tmp_path / "processed" / "report.json").read_text())
    assert len(report["extra_missing"]) == 2 and report["rows_in"] == {"train": 300}
    assert not (tmp_path / "processed" / "tiny_gemma2_ut").exists()
    tr = _read(tmp_path / "processed" / "tiny_gemma2fold0" / "train.parquet")
    assert set(tr["source"]) == {"train"}
    # the file arriving later makes the outputs stale: an error until force=true
    sample_files["extra_33k"].to_csv(tmp_path / "data" / "extra_33k.csv", index=False)
    with pytest.raises(StageInputError, match="other settings.*rows_in"):
        stage.main(["--config", str(profile), "models=tiny_gemma2", "use_ut=false"])


# --------------------------------------------------------------------------------------------------
# Real-file mess through the whole stage

def test_messy_fixture_no_crash_no_lost_row(tmp_path: Path, stage, sample_files, tiny_models_root) -> None:
    profile = _workspace(tmp_path, sample_files, tiny_models_root)
    args = ["--config", str(profile), f"train_csv={FIXTURE}", "use_33k=false", "use_ut=false", "n_folds=3"]
    assert stage.main(args) == 0
    raw = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    report = json.loads((tmp_path / "processed" / "report.json").read_text())
    assert report["rows_in"]["train"] == len(raw) == report["rows_out"]["folds_dev_total"]
    assert report["repairs"]["train"]["lone_surrogate"] == 1
    for m in MODELS:
        dev = pd.concat([_read(tmp_path / "processed" / f"{m}fold{k}" / "dev.parquet") for k in range(3)])
        assert sorted(dev["id"]) == sorted(raw["id"].astype(int)) and dev["length"].max() <= MAX_LEN
    folds = pd.read_csv(tmp_path / "folds.csv").set_index("id")
    assert folds.loc[802221, "fold"] == folds.loc[802222, "fold"]  # the exact duplicate pair
