"""Length-aware batching and padding collation (no padding beyond the longest row of a batch).

Training uses *length-grouped* batches (random mega-batches sorted by length inside, as the HF
``group_by_length`` sampler), so batches stay shuffled across the epoch but rows of similar length are
padded together. Inference uses *length-sorted* batches with an optional token budget, and callers put
predictions back in the original row order with the returned indices.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int = 0,
                           mega_batch_mult: int = 50, drop_last: bool = False,
                           longest_first: bool = False) -> list[np.ndarray]:
    """Shuffled batches of row indices, each made of rows with similar lengths.

    Deterministic in (seed, epoch): a resumed run recomputes the same order and skips what it has seen.
    ``longest_first`` moves the batch with the most padded tokens (rows x longest row) to the front, as HF's
    ``LengthGroupedSampler`` does: an out-of-memory shows at step 1, not hours in.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    mega = max(batch_size * mega_batch_mult, batch_size)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    perm = rng.permutation(len(batches))
    batches = [batches[i] for i in perm]
    if longest_first and batches:
        biggest = int(np.argmax([len(b) * int(lengths[b].max()) for b in batches]))  # first one on ties
        batches.insert(0, batches.pop(biggest))
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None,
                   descending: bool = True) -> list[np.ndarray]:
    """Inference batches over rows sorted by length: at most ``batch_size`` rows and, when given, at most
    ``max_tokens`` padded tokens (rows x longest row) per batch. Longest first, so an out-of-memory
    problem shows up in the first batch rather than after an hour."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths if descending else lengths, kind="stable")
    batches, current, longest = [], [], 0
    for idx in order:
        n = int(lengths[idx])
        new_longest = max(longest, n)
        if current and (len(current) >= batch_size or
                        (max_tokens is not None and new_longest * (len(current) + 1) > max_tokens)):
            batches.append(np.asarray(current))
            current, new_longest = [], n
        current.append(int(idx))
        longest = new_longest
    if current:
        batches.append(np.asarray(current))
    return batches


def file_order_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Batches in file order (the unsorted baseline the speed benchmark compares with)."""
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def collate(sequences: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right",
            pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest row (or ``pad_to``, only used by the naive benchmark baseline)."""
    width = pad_to or max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if padding_side == "right":
            ids[row, :n] = seq
            mask[row, :n] = 1
        else:
            ids[row, width - n:] = seq
            mask[row, width - n:] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def padding_efficiency(batches: Sequence[np.ndarray], lengths: Sequence[int], pad_to: int | None = None) -> float:
    """Real tokens / computed tokens over a batch plan (1.0 = no padding at all)."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    computed = sum(len(b) * (pad_to or int(lengths[b].max())) for b in batches)
    return real / max(computed, 1)
