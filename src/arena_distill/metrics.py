"""Log loss (the Kaggle metric), accuracy, CV tables and a reliability diagram."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .readers import read_json

EPS = 1e-15  # Kaggle's sklearn log_loss clipping


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(probs: np.ndarray, labels: Sequence[int]) -> float:
    """Multi-class log loss; rows renormalised after clipping as Kaggle's scorer does."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    p = p / p.sum(axis=1, keepdims=True)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def accuracy(probs: np.ndarray, labels: Sequence[int]) -> float:
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())


def prior_log_loss(train_labels: Sequence[int], eval_labels: Sequence[int], n_classes: int = 3) -> float:
    """Log loss of always predicting the training class frequencies: the baseline to beat."""
    counts = np.bincount(np.asarray(train_labels), minlength=n_classes).astype(np.float64)
    prior = counts / counts.sum()
    return log_loss(np.tile(prior, (len(eval_labels), 1)), eval_labels)


def classification_metrics(logits: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    probs = softmax(logits)
    return {"log_loss": log_loss(probs, labels), "accuracy": accuracy(probs, labels), "n": int(len(labels))}


def cv_table(save_dir: str | os.PathLike, model_names: Sequence[str], n_folds: int) -> str:
    """Markdown table of ``metrics.json`` across ``<save_dir>/<model>fold<k>/``; missing folds shown as '-'."""
    header = "| model | " + " | ".join(f"fold {k}" for k in range(n_folds)) + " | mean |\n"
    header += "|---|" + "---|" * (n_folds + 1) + "\n"
    rows = []
    for name in model_names:
        cells, values = [], []
        for k in range(n_folds):
            path = Path(save_dir) / f"{name}fold{k}" / "metrics.json"
            if path.is_file():
                m = read_json(path)
                values.append(m["valid_log_loss"])
                cells.append(f"{m['valid_log_loss']:.4f} ({m['valid_accuracy']:.3f})")
            else:
                cells.append("-")
        mean = f"{np.mean(values):.4f}" if values else "-"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return header + "\n".join(rows) + "\n\ncells: valid log loss (accuracy)\n"


def reliability_bins(probs: np.ndarray, labels: Sequence[int], n_bins: int = 10) -> dict[str, list[float]]:
    """Per-class one-vs-rest calibration: mean predicted vs observed frequency per probability bin."""
    probs = np.asarray(probs)
    y = np.asarray(labels)
    edges = np.linspace(0, 1, n_bins + 1)
    out: dict[str, list[float]] = {}
    for c in range(probs.shape[1]):
        p, hit = probs[:, c], (y == c).astype(np.float64)
        idx = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
        mean_p, freq, count = [], [], []
        for b in range(n_bins):
            sel = idx == b
            mean_p.append(float(p[sel].mean()) if sel.any() else float("nan"))
            freq.append(float(hit[sel].mean()) if sel.any() else float("nan"))
            count.append(int(sel.sum()))
        out[f"class{c}_pred"], out[f"class{c}_freq"], out[f"class{c}_count"] = mean_p, freq, count
    return out


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = 10) -> float:
    """Top-label ECE."""
    probs = np.asarray(probs)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    hit = (pred == np.asarray(labels)).astype(np.float64)
    idx = np.clip(np.digitize(conf, np.linspace(0, 1, n_bins + 1)) - 1, 0, n_bins - 1)
    return float(sum(abs(hit[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean()
                     for b in range(n_bins) if (idx == b).any()))
