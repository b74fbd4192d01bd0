"""Seeding, rank/world-size from the launcher's environment, rank-0 printing, device and dtype choice.

Processes are started by existing engines (``accelerate launch``, ``torchrun``, ``deepspeed``); this
module only reads what they set (RANK, WORLD_SIZE, LOCAL_RANK) and never launches anything itself.
"""
from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only, flushed (logs are read live under launchers that buffer)."""
    if is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def warn0(msg: str) -> None:
    if is_main():
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int, offset_by_rank: bool = True) -> int:
    """Seed python, numpy and torch with ``seed + rank`` (distinct streams per process); return it."""
    s = seed + (rank() if offset_by_rank else 0)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    return s


def rng_state() -> dict:
    """Every RNG state a resumed run needs to continue bit-identically."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def pick_dtype(requested: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it, fp16 on older GPUs (T4), fp32 on CPU."""
    device = device or pick_device()
    if requested != "auto":
        return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Timer:
    """Wall-clock stage timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
