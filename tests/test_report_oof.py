"""Report (issue 9, item 7): the true out-of-fold CV table from per-fold ``oof.csv`` (the contract with
stages 4 and 7: ``id,label,winner_model_a,winner_model_b,winner_tie,step``), loss-curve PNGs from each
run's ``log.jsonl``, the reliability diagram on out-of-fold rows, and clear messages when files are missing.
The fixtures below are written in exactly that format; no model runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill.io import StageInputError, mark_done
from arena_distill.metrics import log_loss
from arena_distill.oof import OOF_COLUMNS, oof_table, read_curve, read_oof

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def _oof(n: int, seed: int, sharp: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), label] += sharp  # better than chance, so the numbers differ per model
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return pd.DataFrame({"id": np.arange(n) + 1000 * seed, "label": label, "winner_model_a": p[:, 0],
                         "winner_model_b": p[:, 1], "winner_tie": p[:, 2], "step": 40})[OOF_COLUMNS]


def _log(path: Path, steps: int, eval_every: int) -> None:
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 1.1 - 0.01 * s, "ce": 1.1 - 0.01 * s, "lr": 1e-4, "dt": 0.1, "tok_s": 100.0,
               "epoch": 0}
        if s % eval_every == 0:
            row.update(valid_log_loss=1.05 - 0.005 * s, valid_accuracy=0.4)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def save(tmp_path):
    """2 folds: teacher tiny_llama both folds, student tiny_gemma2 fold 0 only (fold 1 missing)."""
    save = tmp_path / "save"
    for k in range(2):
        d = save / f"tiny_llamafold{k}"
        d.mkdir(parents=True)
        _oof(60, seed=k, sharp=1.0).to_csv(d / "oof.csv", index=False)
        _log(d / "log.jsonl", 20, 10)
    d = save / "tiny_gemma2fold0"
    d.mkdir()
    _oof(60, seed=5, sharp=2.0).to_csv(d / "oof.csv", index=False)
    _log(d / "log.jsonl", 12, 6)
    _log(save / "tiny_gemma2_ut" / "log.jsonl", 8, 100)  # post-pretrain: train loss only
    return save


def test_oof_table_pools_folds(save):
    table, found = oof_table(save, ["tiny_llama", "tiny_gemma2"], 2, {"tiny_gemma2": "stage 7"})
    folds = [pd.read_csv(save / f"tiny_llamafold{k}" / "oof.csv") for k in range(2)]
    pool = pd.concat(folds)
    expect = log_loss(pool[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), pool["label"])
    per_fold = [log_loss(f[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), f["label"]) for f in folds]
    llama = next(line for line in table.splitlines() if line.startswith("| tiny_llama"))
    assert llama.startswith(f"| tiny_llama | {per_fold[0]:.4f} | {per_fold[1]:.4f} | {expect:.4f} |")
    assert llama.endswith("| 120 |")
    gemma = next(line for line in table.splitlines() if line.startswith("| tiny_gemma2"))
    assert "(partial)" in gemma and "| - |" in gemma
    assert "tiny_gemma2: no `oof.csv` for fold(s) 1 -> run stage 7" in table
    assert sorted(found["tiny_llama"]) == [0, 1]


def test_finished_fold_without_oof_says_force(save):
    mark_done(save / "tiny_gemma2fold1")
    table, _ = oof_table(save, ["tiny_gemma2"], 2, {"tiny_gemma2": "stage 7"})
    assert "fold(s) 1 finished without `oof.csv`" in table and "force=true" in table


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["step"]), r"missing columns \['step'\]"),
    (lambda df: df.assign(label=df["label"].where(df.index != 3, 7)), r"row 5: label 7"),
    (lambda df: df.assign(winner_tie=df["winner_tie"] + 0.5), r"row 2: probabilities .* not a distribution"),
])
def test_bad_oof_is_one_line_error(tmp_path, mutate, message):
    path = tmp_path / "oof.csv"
    mutate(_oof(10, 1, 1.0)).to_csv(path, index=False)
    with pytest.raises(StageInputError, match=message) as err:
        read_oof(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_read_curve(save):
    train, valid = read_curve(save / "tiny_llamafold0" / "log.jsonl")
    assert len(train) == 20 and valid == [(10, pytest.approx(1.0)), (20, pytest.approx(0.95))]


def test_report_shows_oof_cv_curves_and_oof_calibration(stage_module, save, tmp_path):
    report = stage_module("10_report")
    out, png, curves = tmp_path / "docs" / "cv_report.md", tmp_path / "docs" / "rel.png", tmp_path / "docs" / "curves"
    text = report.main(["--config", CONFIG, f"common.save_dir={save}", "common.n_folds=2", f"out={out}",
                        f"png={png}", f"curves_dir={curves}", f"predict_report={tmp_path / 'none.json'}"])
    assert "## Out-of-fold CV" in text and "| tiny_llama |" in text
    assert "tiny_qwen2: no `oof.csv` for fold(s) 0, 1 -> run stage 4" in text
    for name in ("tiny_llamafold0", "tiny_llamafold1", "tiny_gemma2fold0", "tiny_gemma2_ut"):
        assert (curves / f"{name}.png").stat().st_size > 1000
        assert f"![{name}](curves/{name}.png)" in text
    assert "post-pretrain (stage 3)" in text and "student (stage 7) fold 0" in text
    assert png.stat().st_size > 1000 and "![reliability diagram](rel.png)" in text
    assert "student's out-of-fold predictions (folds [0])" in text


def test_report_without_oof_keeps_old_contents(stage_module, tmp_path):
    report = stage_module("10_report")
    save = tmp_path / "save"
    d = save / "tiny_gemma2fold0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"valid_log_loss": 1.0, "valid_accuracy": 0.4}))
    text = report.main(["--config", CONFIG, f"common.save_dir={save}", "common.n_folds=2",
                        f"out={tmp_path / 'r.md'}", f"png={tmp_path / 'r.png'}", f"curves_dir={tmp_path / 'c'}",
                        f"predict_report={tmp_path / 'none.json'}"])
    assert "## Per-fold validation" in text and "1.0000 (0.400)" in text
    assert "tiny_gemma2: no `oof.csv` for fold(s) 0, 1 -> run stage 7" in text
    assert "No training logs yet" in text and "No held-out predictions yet" in text
