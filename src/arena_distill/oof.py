"""Out-of-fold predictions: the dev-row probabilities of the checkpoint a training stage keeps.

Stages 4 and 7 write ``<out_dir>/oof.csv`` beside the adapter they keep (best or last), with exactly the columns
``id,label,winner_model_a,winner_model_b,winner_tie,step``: ``id`` from the fold's dev.parquet (file order),
``label`` the int class (0 = A wins, 1 = B wins, 2 = tie), the three probabilities of that checkpoint (softmax
of its logits, float64 text) and ``step`` its optimizer step. Every dev row is held out from that fold's
training, so the five files of a model together are a true out-of-fold prediction of the training set; the
report (stage 10) builds the CV table and the reliability diagram from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .io import atomic_write_text
from .metrics import softmax

OOF_FILE = "oof.csv"
OOF_COLUMNS = ["id", "label", "winner_model_a", "winner_model_b", "winner_tie", "step"]


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
