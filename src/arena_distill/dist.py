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


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def device_capability(device: torch.device | None = None) -> tuple[int, int] | None:
    """CUDA compute capability of ``device`` (``(7, 5)`` T4, ``(8, 0)`` A100, ``(9, 0)`` H100), None on CPU."""
    device = device or pick_device()
    if device.type != "cuda":
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def dtype_for_capability(capability: tuple[int, int] | None, requested: str = "auto") -> torch.dtype:
    """The one dtype rule of the project: ``auto`` = bf16 from sm80 (A100/H100) up, fp16 below (T4 sm75,
    V100 sm70), fp32 on CPU (``capability=None``). An explicit name wins.

    Decided from the capability, not ``torch.cuda.is_bf16_supported()``: in torch 2.13
    (torch/cuda/__init__.py, ``is_bf16_supported(including_emulation=True)``) that returns True on sm75 as
    soon as a bf16 tensor can be *created* (``_check_bf16_tensor_supported``), i.e. emulated bf16 with no
    tensor-core path (several times slower on a T4) and refused by GPTQModel's Marlin kernels.
    """
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r} (expected auto, {', '.join(DTYPES)})")
        if DTYPES[requested] is torch.bfloat16 and capability is not None and capability < (8, 0):
            warn0(f"bf16 requested on compute capability sm{capability[0]}{capability[1]}: emulated, "
                  "no tensor cores (fp16 is the fast dtype there)")
        return DTYPES[requested]
    if capability is None:
        return torch.float32
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16


def mixed_precision_for(capability: tuple[int, int] | None, requested: str = "auto") -> str:
    """accelerate's ``mixed_precision`` under the same rule: ``bf16`` from sm80, ``fp16`` below, ``no`` on CPU."""
    if requested != "auto":
        return requested
    if capability is None:
        return "no"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype_for_capability(capability)]


def pick_dtype(requested: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """``dtype_for_capability`` for ``device`` (default: this process's device)."""
    return dtype_for_capability(device_capability(device), requested)


class Timer:
    """Wall-clock stage timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
