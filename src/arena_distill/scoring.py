"""Batched classifier scoring of pre-tokenized rows: length-sorted, padded per batch, original order back.

The one scoring loop of the project: training-time evaluation, the teacher-logits stage, the averaged /
quantized model checks and test prediction all call ``score_classifier``. Rows are token-id lists (the
``input_ids`` column of the processed parquet, or ``arena_text.encode_batch`` output).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import collate, file_order_batches, sorted_batches
from .dist import is_main


@torch.inference_mode()
def score_classifier(model, sequences: Sequence[Sequence[int]], pad_id: int, *, batch_size: int,
                     max_tokens: int | None = None, sort: bool = True, shard: tuple[int, int] = (0, 1),
                     device: torch.device | str | None = None, desc: str = "scoring", progress: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Logits of this shard's rows: ``(row_indices (ascending), logits[len, n_labels] float32, stats)``.

    ``sort=True``: length-sorted batches of at most ``batch_size`` rows and ``max_tokens`` padded tokens,
    longest first, each padded to its own longest row only. ``sort=False``: file order, same batch size
    (the baseline). ``shard=(rank, world)``: this process takes every ``world``-th batch of the plan, so
    every process gets long and short rows alike. ``stats``: rows, seconds, rows/s, padding efficiency
    (real / computed tokens), batches.
    """
    rank, world = shard
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    plan = sorted_batches(lengths, batch_size, max_tokens) if sort else file_order_batches(len(sequences), batch_size)
    batches = plan[rank::world]
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_labels = int(getattr(getattr(model, "config", None), "num_labels", 3))
    real = sum(int(lengths[b].sum()) for b in batches)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches)
    rows, outs = [], []
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="row", dynamic_ncols=True, mininterval=1.0,
               disable=not (progress and is_main()))
    start = time.perf_counter()
    for batch in batches:
        ids, mask = collate([sequences[i] for i in batch], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        rows.append(batch)
        outs.append(logits.float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    seconds = time.perf_counter() - start
    n = sum(len(b) for b in batches)
    stats = {"rows": n, "seconds": round(seconds, 3), "rows_per_s": round(n / max(seconds, 1e-9), 2),
             "padding_efficiency": round(real / max(computed, 1), 4), "batches": len(batches), "sorted": sort}
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, n_labels), dtype=np.float32), stats
    idx = np.concatenate(rows)
    logits = np.concatenate(outs).astype(np.float32)
    order = np.argsort(idx, kind="stable")
    return idx[order], logits[order], stats
