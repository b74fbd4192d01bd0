"""Out-of-fold predictions and training curves: written by stages 4 and 7, read by the report (stage 10).

Contract: stages 4 and 7 write ``<out_dir>/oof.csv`` beside the adapter they keep (best or last), i.e.
``<save_dir>/<model>fold<k>/oof.csv``, with exactly the columns ``id,label,winner_model_a,winner_model_b,
winner_tie,step``: one row per dev row of fold k (dev.parquet order), ``label`` 0 = A wins, 1 = B wins,
2 = tie, the three probabilities of the kept checkpoint (softmax of its logits, float64 text), and the
optimizer step of that checkpoint. Pooled over folds these are true out-of-fold predictions: every row is
scored by the model that did not train on it (unlike the fold-averaged model, which saw 4 of 5).

Curves come from each run's ``log.jsonl`` (``train_utils.StepLogger``: one row per optimizer step with
``step`` and ``loss``; evaluation steps also carry ``valid_log_loss``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .io import StageInputError, atomic_write_text
from .metrics import accuracy, log_loss, softmax

OOF_FILE = "oof.csv"
OOF_COLUMNS = ["id", "label", "winner_model_a", "winner_model_b", "winner_tie", "step"]
PROB_COLUMNS = ["winner_model_a", "winner_model_b", "winner_tie"]


# ------------------------------------------------------------------------------------------------ writing
def oof_frame(ids: np.ndarray, labels: np.ndarray, logits: np.ndarray, step: int) -> pd.DataFrame:
    probs = softmax(np.asarray(logits, dtype=np.float64))
    if probs.shape != (len(ids), 3) or len(labels) != len(ids):
        raise ValueError(f"oof: {len(ids)} ids, {len(labels)} labels, probabilities of shape {probs.shape}")
    return pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64),
                         "winner_model_a": probs[:, 0], "winner_model_b": probs[:, 1], "winner_tie": probs[:, 2],
                         "step": int(step)})[OOF_COLUMNS]


def oof_writer(ids: np.ndarray, labels: np.ndarray, logits: np.ndarray, step: int) -> Callable[[Path], None]:
    """A writer of ``<folder>/oof.csv`` for ``engine.Evaluation.write`` (called on rank 0 only)."""
    def write(folder: Path) -> None:
        atomic_write_text(Path(folder) / OOF_FILE, oof_frame(ids, labels, logits, step).to_csv(index=False))
    return write


# ------------------------------------------------------------------------------------------------ reading
def read_oof(path: str | os.PathLike):
    """One fold's ``oof.csv``, checked: the contract's columns, labels in {0, 1, 2}, probabilities finite,
    in [0, 1] and summing to 1 per row. Any violation is a one-line error naming the file and row."""
    from .readers import read_csv

    fix = "re-run the stage that wrote it (4 or 7) with force=true"
    df = read_csv(path, fix=fix)
    missing = [c for c in OOF_COLUMNS if c not in df.columns]
    if missing:
        raise StageInputError(f"{path}: missing columns {missing} (expected {','.join(OOF_COLUMNS)}) -> {fix}")
    if df.empty:
        raise StageInputError(f"{path}: no rows -> {fix}")
    label = df["label"]
    bad = ~label.isin([0, 1, 2])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise StageInputError(f"{path}: row {i + 2}: label {label.tolist()[i]!r} is not 0 (a), 1 (b) or 2 (tie) -> {fix}")
    probs = df[PROB_COLUMNS].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1) | (
        np.abs(probs.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StageInputError(f"{path}: row {i + 2}: probabilities {probs[i].tolist()} are not a distribution "
                              f"(finite, in [0, 1], sum 1) -> {fix}")
    return df.assign(label=label.astype(int))


def collect_oof(save_dir: str | os.PathLike, name: str, n_folds: int) -> tuple[dict, list[int]]:
    """``({fold: DataFrame}, [folds without oof.csv])`` for one model."""
    found, missing = {}, []
    for k in range(n_folds):
        path = Path(save_dir) / f"{name}fold{k}" / OOF_FILE
        if path.is_file():
            found[k] = read_oof(path)
        else:
            missing.append(k)
    return found, missing


def pooled(found: dict):
    """All folds' rows in one frame (``fold`` column added)."""
    import pandas as pd

    return pd.concat([df.assign(fold=k) for k, df in sorted(found.items())], ignore_index=True)


def oof_table(save_dir: str | os.PathLike, names: Sequence[str], n_folds: int,
              run_hint: dict[str, str]) -> tuple[str, dict[str, dict]]:
    """Markdown: per model, log loss of each fold's out-of-fold rows, the pooled out-of-fold log loss
    and accuracy (the CV estimate), rows; plus one line per model naming the folds that lack ``oof.csv``
    and the command that writes it. Returns (markdown, {name: {fold: DataFrame}})."""
    header = ("| model | " + " | ".join(f"fold {k}" for k in range(n_folds)) +
              " | OOF log loss (pooled) | OOF accuracy | rows |\n|---|" + "---|" * (n_folds + 3))
    rows, notes, all_found = [], [], {}
    for name in names:
        found, missing = collect_oof(save_dir, name, n_folds)
        all_found[name] = found
        cells = []
        for k in range(n_folds):
            df = found.get(k)
            cells.append("-" if df is None else f"{log_loss(df[PROB_COLUMNS].to_numpy(), df['label']):.4f}")
        if found:
            pool = pooled(found)
            p, y = pool[PROB_COLUMNS].to_numpy(dtype=np.float64), pool["label"].to_numpy()
            tail = [f"{log_loss(p, y):.4f}" + ("" if not missing else " (partial)"), f"{accuracy(p, y):.3f}",
                    str(len(pool))]
        else:
            tail = ["-", "-", "0"]
        rows.append(f"| {name} | " + " | ".join(cells + tail) + " |")
        if missing:
            from .io import is_done

            hint = run_hint.get(name, "its training stage")
            stale = [k for k in missing if is_done(Path(save_dir) / f"{name}fold{k}")]
            todo = [k for k in missing if k not in stale]
            if todo:
                notes.append(f"- {name}: no `{OOF_FILE}` for fold(s) {', '.join(map(str, todo))} -> run {hint} "
                             f"(e.g. `sh run_pipeline.sh {todo[0]}`)")
            if stale:
                notes.append(f"- {name}: fold(s) {', '.join(map(str, stale))} finished without `{OOF_FILE}` (made "
                             f"by an older version) -> re-run {hint} with force=true")
    return "\n".join([header, *rows]) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""), all_found


def read_curve(log_path: str | os.PathLike) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(train [(step, loss)], valid [(step, valid_log_loss)])`` from a run's ``log.jsonl``."""
    from .readers import read_jsonl

    train, valid = [], []
    for row in read_jsonl(log_path, fix="delete it and re-run the stage with force=true"):
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        if isinstance(row.get("loss"), (int, float)):
            train.append((int(step), float(row["loss"])))
        if isinstance(row.get("valid_log_loss"), (int, float)):
            valid.append((int(step), float(row["valid_log_loss"])))
    return train, valid
