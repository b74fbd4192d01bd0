"""The sample generator: exact Kaggle schema, every quirk present, known learnable signal, determinism,
and stage 0 writing/skipping/refusing."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill import arena_text as at
from arena_distill import sample_data as sd

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample() -> tuple[dict[str, pd.DataFrame], dict]:
    return sd.make_sample(n_train=3000, n_test=300, n_33k=200, n_ut=200, seed=2025)


def test_exact_kaggle_schema(sample) -> None:
    files, _ = sample
    assert list(files["train"].columns) == ["id", "model_a", "model_b", "prompt", "response_a", "response_b",
                                            "winner_model_a", "winner_model_b", "winner_tie"]
    assert list(files["test"].columns) == ["id", "prompt", "response_a", "response_b"]
    assert list(files["sample_submission"].columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert list(files["extra_33k"].columns) == list(files["train"].columns) == list(files["extra_ut"].columns)
    assert list(files["truth"].columns) == ["id", "split", "p_a", "p_b", "p_tie", "label"]
    ids = pd.concat([files[k]["id"] for k in ("train", "test", "extra_33k", "extra_ut")])
    assert ids.is_unique and ids.dtype == np.int64
    onehot = files["train"][list(at.LABEL_COLUMNS)].to_numpy()
    assert set(np.unique(onehot)) == {0, 1} and (onehot.sum(axis=1) == 1).all()
    assert files["sample_submission"]["id"].tolist() == files["test"]["id"].tolist()


def test_every_quirk_present_and_parseable(sample, tmp_path: Path) -> None:
    files, report = sample
    train = files["train"]
    q = report["quirks"]["train"]
    for kind in ("multi_turn", "many_turns", "null_turn", "both_null", "empty_response", "identical", "emoji",
                 "non_english", "code", "very_long", "duplicate_row"):
        assert q.get(kind, 0) > 0, kind
    cells = pd.concat([train[c] for c in at.TEXT_COLUMNS])
    assert all(c.isascii() for c in cells)  # ensure_ascii JSON, as Kaggle
    assert cells.str.contains(r"\\ud83[cdef]\\ud[c-f][0-9a-f]{2}", regex=True).any()  # emoji as surrogate pairs
    assert cells.str.contains(r"\\u[0-9a-f]{4}", regex=True).any()
    assert (cells == "[null]").any() and cells.str.contains("null]").any()
    assert cells.str.contains("```python", regex=False).any()
    assert (cells.str.len() > 20_000).any()
    assert (train["response_a"] == train["response_b"]).any()
    content = train.drop(columns="id")
    assert content.duplicated().any()  # exact duplicate rows with new ids
    train.to_csv(tmp_path / "train.csv", index=False)
    rep: Counter = Counter()
    df = at.read_arena_csv(tmp_path / "train.csv", kind="train", repairs=rep)
    assert len(df) == len(train) and df["n_turns"].max() >= 15
    assert rep["null_turn"] > 0 and rep["all_turns_null"] > 0 and "lone_surrogate" not in rep
    assert df["prompt"].str.contains("\U0001F600|\U0001F680|\U0001F44D|\U0001F914|\U0001F389", regex=True).any()
    assert df["response_a"].str.contains(r"[\u4e00-\u9fff]|[\u0400-\u04ff]", regex=True).any()


def test_signal_is_known_and_learnable(sample) -> None:
    files, report = sample
    truth = files["truth"]
    p = truth[["p_a", "p_b", "p_tie"]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1) and (p > 0).all()
    tr = report["train"]
    assert 0.8 < tr["best_log_loss"] < 0.95 and tr["prior_log_loss"] > 1.05
    assert tr["prior_log_loss"] - tr["best_log_loss"] > 0.15
    assert 0.55 < tr["longer_wins_decisive"] < 0.70
    # labels agree with the truth file and the one-hot columns
    train_truth = truth[truth["split"] == "train"].set_index("id")
    onehot = files["train"].set_index("id")[list(at.LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    assert (train_truth.loc[files["train"]["id"], "label"].to_numpy() == onehot).all()
    # best log loss recomputed from the truth file
    y = train_truth["label"].to_numpy()
    pt = train_truth[["p_a", "p_b", "p_tie"]].to_numpy()
    assert abs(-np.log(pt[np.arange(len(y)), y]).mean() - tr["best_log_loss"]) < 1e-3


def test_truth_model_biases() -> None:
    same = sd.truth_probs((40, 1, 0), (40, 1, 0))
    assert same[2] > 0.5 and same[0] > same[1]  # equal quality: mostly ties; slight position bias to A
    longer = sd.truth_probs((200, 1, 0), (20, 1, 0))
    assert longer[0] > longer[1]
    marked = sd.truth_probs((30, 0, 0), (30, 2, 0))
    assert marked[1] > 0.5
    refused = sd.truth_probs((30, 0, 1), (30, 0, 0))
    assert refused[1] > refused[0]


def test_deterministic_and_seeded() -> None:
    a, _ = sd.make_sample(n_train=200, n_test=20, n_33k=20, n_ut=20, seed=7)
    b, _ = sd.make_sample(n_train=200, n_test=20, n_33k=20, n_ut=20, seed=7)
    c, _ = sd.make_sample(n_train=200, n_test=20, n_33k=20, n_ut=20, seed=8)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["train"].equals(c["train"])
    # each split has its own stream: a bigger test set leaves train unchanged
    d, _ = sd.make_sample(n_train=200, n_test=50, n_33k=20, n_ut=20, seed=7)
    assert a["train"].equals(d["train"])


def test_extra_data_reuses_some_train_prompts(sample) -> None:
    files, _ = sample
    train_prompts = set(files["train"]["prompt"])
    frac = files["extra_33k"]["prompt"].isin(train_prompts).mean()
    assert 0.05 < frac < 0.5


def test_stage0_writes_skips_and_protects_real_data(tmp_path: Path, capsys, stage_module) -> None:
    stage = stage_module("00_make_sample_data")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"common:\n  data_dir: {tmp_path / 'd'}\n  seed: 3\nsample:\n  n_train: 120\n  n_test: 10\n"
                   f"  n_33k: 10\n  n_ut: 10\n")
    assert stage.main(["--config", str(cfg)]) == 0
    out = tmp_path / "d"
    names = {"train.csv", "test.csv", "sample_submission.csv", "truth.csv", "extra_33k.csv", "extra_ut.csv",
             "sample_report.json", "config.yaml", "DONE.json"}
    assert names <= {p.name for p in out.iterdir()}
    report = json.loads((out / "sample_report.json").read_text())
    assert report["sizes"]["train"] == 120 and "best_log_loss" in report["train"]
    assert re.search(r"best achievable log loss 0\.\d+ .* class prior 1\.\d+", capsys.readouterr().out)
    mtime = (out / "train.csv").stat().st_mtime_ns
    assert stage.main(["--config", str(cfg)]) == 0 and (out / "train.csv").stat().st_mtime_ns == mtime  # skipped
    assert stage.main(["--config", str(cfg), "force=true", "n_train=130"]) == 0
    assert len(pd.read_csv(out / "train.csv")) == 130
    # a train.csv the generator did not write (real Kaggle data) is never overwritten
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("id\n1\n")
    with pytest.raises(stage.StageInputError, match="refusing to overwrite"):
        stage.main(["--config", str(cfg), f"data_dir={real}", "force=true"])
    assert (real / "train.csv").read_text() == "id\n1\n"
