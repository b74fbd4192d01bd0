"""Batched classifier scoring of pre-tokenized rows: length-sorted, padded per batch, original order back.

Used by training-time evaluation, the teacher-logits stage and prediction. Rows are token-id lists
(``input_ids`` column of the processed parquet, or ``arena_text.encode_batch`` output).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import collate, sorted_batches
from .dist import is_main


@torch.inference_mode()
def score_classifier(model, sequences: Sequence[Sequence[int]], pad_id: int, *, batch_size: int,
                     max_tokens: int | None = None, device: torch.device | str | None = None,
                     desc: str = "scoring", progress: bool = True, shard: tuple[int, int] = (0, 1)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits for the rows of this shard, in original order.

    ``shard=(rank, world)``: this process scores batches ``rank::world`` of the length-sorted plan (so
    every process gets long and short rows alike). Returns ``(row_indices, logits)``; with the default
    single shard that is ``(arange(n), logits[n, n_labels])``.
    """
    rank, world = shard
    lengths = [len(s) for s in sequences]
    batches = sorted_batches(lengths, batch_size, max_tokens)[rank::world]
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows, outs = [], []
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="row", disable=not (progress and is_main()),
               dynamic_ncols=True, mininterval=1.0)
    for batch in batches:
        ids, mask = collate([sequences[i] for i in batch], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        rows.append(batch)
        outs.append(logits.float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    if not rows:
        n_labels = getattr(getattr(model, "config", None), "num_labels", 3)
        return np.zeros(0, dtype=np.int64), np.zeros((0, n_labels), dtype=np.float32)
    idx = np.concatenate(rows)
    logits = np.concatenate(outs)
    order = np.argsort(idx, kind="stable")
    return idx[order], logits[order]
