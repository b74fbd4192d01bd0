"""Test-set prediction pieces: A/B-swap TTA, multi-process sharding with a file-based gather, model loading
for prediction, and the submission writer + validator (scoring itself is ``scoring.score_classifier``).

TTA. Every row is scored twice: as given, and with responses A and B swapped. The swapped pass predicts
``[p(B' wins), ...]`` for the swapped row, i.e. ``[pB, pA, pT]`` in the original orientation, so its
columns are mapped back with ``SWAP_PERM = [1, 0, 2]`` before the two probability vectors are averaged.

Sharding. Processes are started by an existing launcher (``accelerate launch`` / ``torchrun``); each reads
RANK / WORLD_SIZE, scores every ``world``-th batch of the length-sorted plan over *all* sequences (both
orders: with two GPUs, the straight and the swapped passes run at the same time, as the seed's Kaggle
notebook did), writes its part atomically as ``.npz`` and rank 0 waits for all parts and combines them.
No process group is needed, so this works the same under any launcher.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

# Loading a GPTQ checkpoint imports gptqmodel, whose CPU worker pool fails on 2-core machines without this.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from .io import atomic_path

SUBMISSION_COLUMNS = ("id", "winner_model_a", "winner_model_b", "winner_tie")
SWAP_PERM = np.array([1, 0, 2])  # column j of a swapped-row prediction is class SWAP_PERM[j] of the original
SUM_TOL = 1e-4  # row sums of a written CSV (8 decimals) are within 1e-7; Kaggle renormalises anyway


class SubmissionError(ValueError):
    """A submission failed validation; the message lists the problems row by row."""


# ---------------------------------------------------------------------------------------------------
# TTA


def unswap_probs(p_swapped: np.ndarray) -> np.ndarray:
    """Probabilities predicted for A/B-swapped rows -> the original orientation ([pB, pA, pT] -> [pA, pB, pT])."""
    return np.asarray(p_swapped)[:, SWAP_PERM]


def tta_combine(p_straight: np.ndarray, p_swapped: np.ndarray | None) -> np.ndarray:
    """Mean of the straight probabilities and the swapped ones mapped back (or the straight ones alone)."""
    if p_swapped is None:
        return np.asarray(p_straight, dtype=np.float64)
    return 0.5 * (np.asarray(p_straight, dtype=np.float64) + unswap_probs(p_swapped))


# ---------------------------------------------------------------------------------------------------
# multi-process gather through files


def run_tag(*parts: object) -> str:
    """A short id for one prediction run, the same on every rank (so parts of other runs are never mixed)."""
    launcher = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return hashlib.sha1("|".join(map(str, (launcher, *parts))).encode()).hexdigest()[:12]


def part_path(parts_dir: str | os.PathLike, tag: str, rank: int, world: int) -> Path:
    return Path(parts_dir) / f"part-{tag}-rank{rank}-of{world}.npz"


def write_part(parts_dir: str | os.PathLike, tag: str, rank: int, world: int, idx: np.ndarray,
               logits: np.ndarray, stats: dict) -> Path:
    path = part_path(parts_dir, tag, rank, world)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, idx=idx, logits=logits, rows_per_s=stats.get("rows_per_s", 0.0))
    return path


def gather_parts(parts_dir: str | os.PathLike, tag: str, world: int, n_rows: int, timeout_s: float = 3600,
                 poll_s: float = 0.5) -> np.ndarray:
    """Rank 0: wait for every rank's part, check that each row came exactly once, return logits in order."""
    paths = [part_path(parts_dir, tag, r, world) for r in range(world)]
    deadline = time.monotonic() + timeout_s
    while not all(p.is_file() for p in paths):
        if time.monotonic() > deadline:
            missing = [str(p) for p in paths if not p.is_file()]
            raise TimeoutError(f"prediction parts missing after {timeout_s:.0f} s: {missing} (did a rank fail?)")
        time.sleep(poll_s)
    idx_all, logit_all = [], []
    for p in paths:
        with np.load(p) as z:
            idx_all.append(z["idx"])
            logit_all.append(z["logits"])
    idx = np.concatenate(idx_all)
    logits = np.concatenate(logit_all)
    if len(idx) != n_rows or not np.array_equal(np.sort(idx), np.arange(n_rows)):
        raise RuntimeError(f"gathered {len(idx)} rows for {n_rows} sequences (parts {paths}): some rows are "
                           "missing or duplicated")
    for p in paths:
        p.unlink()
    out = np.empty_like(logits)
    out[idx] = logits
    return out


# ---------------------------------------------------------------------------------------------------
# submission


def _fmt_rows(rows: np.ndarray, ids: Sequence, limit: int = 5) -> str:
    shown = ", ".join(f"row {int(r) + 1} (id {ids[int(r)]})" for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return shown + more


def validate_submission(df: pd.DataFrame, test_ids: Sequence[int] | None = None) -> list[str]:
    """Problems with a submission DataFrame ([] = valid). Rows are numbered from 1 (data rows).

    Checks: columns exactly ``id,winner_model_a,winner_model_b,winner_tie``; integer ids, none missing
    or duplicated; probabilities numeric, finite, in [0, 1], each row summing to 1 (within 1e-4). With
    ``test_ids``: every test id exactly once, no other id, rows in test order.
    """
    errors: list[str] = []
    cols = [str(c) for c in df.columns]
    if cols != list(SUBMISSION_COLUMNS):
        missing = [c for c in SUBMISSION_COLUMNS if c not in cols]
        extra = [c for c in cols if c not in SUBMISSION_COLUMNS]
        detail = (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
        if not missing and not extra:
            detail = "; same names, wrong order"
        errors.append(f"columns must be {list(SUBMISSION_COLUMNS)}, got {cols}{detail}")
        if missing:
            return errors
    raw_ids = df["id"]
    num_ids = pd.to_numeric(raw_ids, errors="coerce")
    bad = (num_ids.isna() | (num_ids != num_ids.round())).to_numpy()
    shown_ids = raw_ids.astype(str).tolist()
    if bad.any():
        errors.append(f"id: {int(bad.sum())} missing or non-integer id(s): {_fmt_rows(np.flatnonzero(bad), shown_ids)}")
    ids = num_ids.where(~pd.Series(bad, index=num_ids.index)).astype("Int64")
    dup = (ids.duplicated(keep="first") & ~pd.Series(bad, index=ids.index)).to_numpy()
    if dup.any():
        errors.append(f"id: {int(dup.sum())} duplicate id(s): {_fmt_rows(np.flatnonzero(dup), shown_ids)}")
    prob_cols = [c for c in SUBMISSION_COLUMNS[1:]]
    mat = np.full((len(df), 3), np.nan)
    for j, col in enumerate(prob_cols):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        nonnum = pd.isna(pd.to_numeric(df[col], errors="coerce")).to_numpy() & df[col].notna().to_numpy()
        if nonnum.any():
            errors.append(f"{col}: {int(nonnum.sum())} non-numeric value(s): {_fmt_rows(np.flatnonzero(nonnum), shown_ids)}")
        nan = np.isnan(values) & ~nonnum
        if nan.any():
            errors.append(f"{col}: {int(nan.sum())} NaN/empty value(s): {_fmt_rows(np.flatnonzero(nan), shown_ids)}")
        inf = np.isinf(values)
        if inf.any():
            errors.append(f"{col}: {int(inf.sum())} infinite value(s): {_fmt_rows(np.flatnonzero(inf), shown_ids)}")
        out = np.isfinite(values) & ((values < 0) | (values > 1))
        if out.any():
            errors.append(f"{col}: {int(out.sum())} value(s) outside [0, 1]: {_fmt_rows(np.flatnonzero(out), shown_ids)}")
        mat[:, j] = values
    finite = np.isfinite(mat).all(axis=1)
    sums = mat.sum(axis=1)
    off = finite & (np.abs(sums - 1.0) > SUM_TOL)
    if off.any():
        first = int(np.flatnonzero(off)[0])
        errors.append(f"{int(off.sum())} row(s) do not sum to 1 (e.g. row {first + 1}, id {shown_ids[first]}: "
                      f"sum {sums[first]:.6f}): {_fmt_rows(np.flatnonzero(off), shown_ids)}")
    if test_ids is not None:
        test = pd.Series(np.asarray(test_ids)).astype("int64")
        have = set(ids.dropna().astype("int64").tolist())
        want = set(test.tolist())
        missing = [i for i in test.tolist() if i not in have]
        extra = sorted(have - want)
        if missing:
            errors.append(f"{len(missing)} test id(s) missing from the submission: {missing[:5]}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        if extra:
            errors.append(f"{len(extra)} id(s) not in the test file: {extra[:5]}"
                          + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
        if not missing and not extra and not dup.any() and not bad.any():
            order_ok = np.array_equal(ids.astype("int64").to_numpy(), test.to_numpy())
            if not order_ok:
                pos = int(np.flatnonzero(ids.astype("int64").to_numpy() != test.to_numpy())[0])
                errors.append(f"rows are not in test order: row {pos + 1} has id {shown_ids[pos]}, the test file has "
                              f"id {test.iloc[pos]} there")
    return errors


def submission_frame(ids: Sequence[int], probs: np.ndarray) -> pd.DataFrame:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 3 or len(probs) != len(ids):
        raise SubmissionError(f"expected probabilities of shape [{len(ids)}, 3], got {probs.shape}")
    return pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "winner_model_a": probs[:, 0],
                         "winner_model_b": probs[:, 1], "winner_tie": probs[:, 2]})


def write_submission(path: str | os.PathLike, ids: Sequence[int], probs: np.ndarray,
                     test_ids: Sequence[int] | None = None) -> Path:
    """Validate, write to a temporary file, re-read and validate the file itself, then rename into place.

    An invalid submission never reaches ``path``; the error lists the problems.
    """
    df = submission_frame(ids, probs)
    errors = validate_submission(df, test_ids)
    if errors:
        raise SubmissionError("submission not written:\n  " + "\n  ".join(errors))
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.8f")
        errors = validate_submission(pd.read_csv(tmp), test_ids)  # what Kaggle will read
        if errors:
            raise SubmissionError(f"submission not written ({path}):\n  " + "\n  ".join(errors))
    return path


# ---------------------------------------------------------------------------------------------------
# which model to predict with


MODEL_SOURCES = ("auto", "gptq", "merged", "adapter")


def resolve_model_source(source: str, gptq_dir: str | os.PathLike, merged_dir: str | os.PathLike,
                         adapter_dir: str | os.PathLike) -> tuple[str, Path]:
    """``auto`` picks the first folder that holds a model: quantized, then merged, then adapter.

    A folder counts when it has ``config.json`` (full models) or ``adapter_config.json`` (adapters); a
    downloaded published model has no DONE.json, so none is required here.
    """
    from .io import StageInputError

    candidates = {"gptq": (Path(gptq_dir), "config.json"), "merged": (Path(merged_dir), "config.json"),
                  "adapter": (Path(adapter_dir), "adapter_config.json")}
    if source not in MODEL_SOURCES:
        raise ValueError(f"model_source must be one of {list(MODEL_SOURCES)}, got {source!r}")
    order = ["gptq", "merged", "adapter"] if source == "auto" else [source]
    for kind in order:
        folder, marker = candidates[kind]
        if (folder / marker).is_file():
            return kind, folder
    tried = ", ".join(f"{k}: {candidates[k][0]}/{candidates[k][1]}" for k in order)
    raise StageInputError(f"no model to predict with (looked for {tried}) -> run first: sh run_final.sh "
                          "(average + merge + quantize), or put the published 8-bit model into the gptq folder")


def adapter_base_model(adapter_dir: str | os.PathLike, base_model: str = "") -> Path:
    """The base checkpoint of an adapter: explicit, else ``config.yaml``'s ``base_model`` (written by the
    training stages), else PEFT's ``base_model_name_or_path``."""
    from .io import StageInputError
    from .readers import read_json, read_yaml

    if base_model:
        return Path(base_model)
    adapter_dir = Path(adapter_dir)
    saved = adapter_dir / "config.yaml"
    if saved.is_file():
        value = (read_yaml(saved, fix="re-run the stage that trained the adapter") or {}).get("base_model")
        if value:
            return Path(value)
    peft_cfg = adapter_dir / "adapter_config.json"
    if peft_cfg.is_file():
        value = read_json(peft_cfg, fix="re-run the stage that trained the adapter").get("base_model_name_or_path")
        if value and Path(value).is_dir():
            return Path(value)
    raise StageInputError(f"cannot tell the base model of adapter {adapter_dir}: set base_model=<folder>")


def load_for_prediction(kind: str, folder: str | os.PathLike, *, base_model: str = "", dtype: str = "auto",
                        device: torch.device | None = None, attn_implementation: str | None = None,
                        gptq_kernel: str = "auto"):
    """``(model, tokenizer)`` ready for inference on ``device`` from a gptq / merged / adapter folder.
    ``gptq_kernel``: ``auto`` = the no-build kernel for this GPU (quant.gptq_kernels), or a named one."""
    from .dist import pick_device, pick_dtype
    from .models import load_classifier, load_peft, load_tokenizer

    device = device or pick_device()
    torch_dtype = pick_dtype(dtype, device)
    folder = Path(folder)
    if kind == "adapter":
        base = adapter_base_model(folder, base_model)
        tok_dir = folder if (folder / "tokenizer_config.json").is_file() else base
        tokenizer = load_tokenizer(tok_dir)
        model = load_classifier(base, num_labels=3, dtype=torch_dtype, attn_implementation=attn_implementation,
                                pad_token_id=tokenizer.pad_token_id)
        model = load_peft(model, folder).to(device)
    else:
        tokenizer = load_tokenizer(folder)
        if kind == "gptq":
            # GPTQ weights are placed at load time, with a kernel that needs no compiler or download
            # (quant.gptq_kernels; docs/gpu.md), falling back when a requested kernel fails.
            from .quant import load_gptq

            model = load_gptq(folder, task="SEQ_CLS", dtype=torch_dtype, device=device, kernel=gptq_kernel,
                              num_labels=3, attn_implementation=attn_implementation)
            model.config.pad_token_id = tokenizer.pad_token_id
        else:
            model = load_classifier(folder, num_labels=3, dtype=torch_dtype, attn_implementation=attn_implementation,
                                    pad_token_id=tokenizer.pad_token_id).to(device)
    # Always the tokenizer's (EOS, models.load_tokenizer): a merged/GPTQ folder saved by an older version
    # may carry the model's own pad id, and the classifier pools the last non-pad token.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
