"""Batched classifier scoring of pre-tokenized rows: length-sorted, padded per batch, original order back.

The one scoring loop of the project: training-time evaluation, the teacher-logits stage, the averaged /
quantized model checks and test prediction all call ``score_classifier``. Rows are token-id lists (the
``input_ids`` column of the processed parquet, or ``arena_text.encode_batch`` output).

Non-finite guard: Gemma-2 overflows in fp16 (the T4 dtype), and a NaN would otherwise only surface in
the submission check at the very end. Every batch's logits are checked; a non-finite batch is scored
again with the model cast to a safe dtype (``safe_dtype``: bf16 from sm80, fp32 below/CPU) and cast
back, or, with ``nonfinite="error"`` (or when the safe pass is not finite either), the run stops naming
the rows.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import collate, file_order_batches, sorted_batches
from .dist import device_capability, is_main


def safe_dtype(capability: tuple[int, int] | None) -> torch.dtype:
    """Where a non-finite fp16 batch is scored again: bf16 (fp32's range) from sm80, else fp32."""
    return torch.bfloat16 if capability is not None and tuple(capability) >= (8, 0) else torch.float32


def _model_dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _set_tensor(module, kind: str, key: str, value: torch.Tensor) -> None:
    if kind == "_parameters":
        module._parameters[key].data = value
    else:
        module._buffers[key] = value


def _rescore_in(model, dtype: torch.dtype, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of one batch with the model's tensors of its working dtype (fp16) cast to ``dtype``, then
    put back. Only those tensors move: ``model.to`` would also cast fp32 buffers such as the rotary
    ``inv_freq`` and leave them changed afterwards. fp16 -> fp32 -> fp16 is exact; fp16 -> bf16 is not,
    so for bf16 the fp16 tensors are kept on the CPU meanwhile (a rare path: ~18 GB of host RAM for 9B)."""
    working = _model_dtype(model)
    moved = [(m, kind, k, t) for m in model.modules() for kind in ("_parameters", "_buffers")
             for k, t in getattr(m, kind).items() if t is not None and t.dtype is working]
    keep_copy = dtype is not torch.float32
    saved = [t.detach().to("cpu", copy=True) if keep_copy else None for *_, t in moved]
    try:
        for m, kind, k, t in moved:
            _set_tensor(m, kind, k, t.detach().to(dtype))
        return model(input_ids=ids, attention_mask=mask).logits.float()
    finally:
        for (m, kind, k, t), copy in zip(moved, saved):
            current = getattr(m, kind)[k]
            _set_tensor(m, kind, k, copy.to(current.device) if copy is not None else current.detach().to(working))


@torch.inference_mode()
def score_classifier(model, sequences: Sequence[Sequence[int]], pad_id: int, *, batch_size: int,
                     max_tokens: int | None = None, sort: bool = True, shard: tuple[int, int] = (0, 1),
                     device: torch.device | str | None = None, desc: str = "scoring", progress: bool = True,
                     nonfinite: str = "rescore") -> tuple[np.ndarray, np.ndarray, dict]:
    """Logits of this shard's rows: ``(row_indices (ascending), logits[len, n_labels] float32, stats)``.

    ``sort=True``: length-sorted batches of at most ``batch_size`` rows and ``max_tokens`` padded tokens,
    longest first, each padded to its own longest row only. ``sort=False``: file order, same batch size
    (the baseline). ``shard=(rank, world)``: this process takes every ``world``-th batch of the plan, so
    every process gets long and short rows alike. ``stats``: rows, seconds, rows/s, padding efficiency
    (real / computed tokens), batches, rescored_batches. ``nonfinite``: ``rescore`` (a batch with a
    non-finite logit is scored again in ``safe_dtype``) or ``error`` (stop, naming the rows).
    """
    if nonfinite not in ("rescore", "error"):
        raise ValueError(f"nonfinite must be 'rescore' or 'error', got {nonfinite!r}")
    rank, world = shard
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    plan = sorted_batches(lengths, batch_size, max_tokens) if sort else file_order_batches(len(sequences), batch_size)
    batches = plan[rank::world]
    device = device or next(model.parameters()).device
    fallback = safe_dtype(device_capability(torch.device(device)))
    rescored = 0
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
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        if not torch.isfinite(logits).all():
            dtype = _model_dtype(model)
            if nonfinite == "rescore" and dtype is not fallback:
                try:
                    logits = _rescore_in(model, fallback, ids, mask)
                except (RuntimeError, ValueError) as exc:  # OOM, or a k-bit model that cannot be cast
                    raise FloatingPointError(
                        f"{desc}: non-finite logits in {dtype} for rows {[int(i) for i in batch][:8]} and "
                        f"scoring them again in {fallback} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                        "use dtype=bf16 on sm80+ or dtype=fp32") from exc
                rescored += 1
            if not torch.isfinite(logits).all():
                tried = f"{dtype} and {fallback}" if nonfinite == "rescore" and dtype is not fallback else str(dtype)
                raise FloatingPointError(
                    f"{desc}: non-finite logits for rows {[int(i) for i in batch][:8]} (batch of {len(batch)}, "
                    f"{int(lengths[batch].max())} tokens) in {tried}; Gemma-2 overflows in fp16: use dtype=bf16 "
                    "on sm80+ or dtype=fp32")
        rows.append(batch)
        outs.append(logits.float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    seconds = time.perf_counter() - start
    n = sum(len(b) for b in batches)
    stats = {"rows": n, "seconds": round(seconds, 3), "rows_per_s": round(n / max(seconds, 1e-9), 2),
             "padding_efficiency": round(real / max(computed, 1), 4), "batches": len(batches), "sorted": sort,
             "rescored_batches": rescored}
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, n_labels), dtype=np.float32), stats
    idx = np.concatenate(rows)
    logits = np.concatenate(outs).astype(np.float32)
    order = np.argsort(idx, kind="stable")
    return idx[order], logits[order], stats
