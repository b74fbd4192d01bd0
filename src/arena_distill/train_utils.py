"""Pieces every training stage shares: accelerator, optimizer + schedule, resumable checkpoints, logging.

Multi-GPU goes through accelerate (plain DDP, or DeepSpeed ZeRO when launched with
``accelerate launch --config_file configs/accelerate/zero2.yaml``); one process on CPU otherwise.
Checkpoints use ``Accelerator.save_state`` (optimizer, scheduler, per-rank RNG states; DeepSpeed's own
format under ZeRO) with a hook that keeps only *trainable* weights, so a 70B teacher's checkpoint
holds its LoRA + head, not 140 GB of frozen base. The loop's position (epoch, step) is saved as JSON
beside it. A resumed run recomputes the same batch order (deterministic in seed and epoch) and skips
the micro-batches already consumed, so its loss curve equals an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from . import config as C
from .dist import device_capability, is_main, mixed_precision_for, print0, world_size
from .io import append_jsonl, atomic_dir, atomic_write_json

STATE_FILE = "loop_state.json"


@dataclasses.dataclass
class LoraArgs:
    """Base model loading + LoRA shape, shared by every LoRA training stage (defaults: the LMSYS seed)."""

    quant: str = C.field("", help="'nf4' = QLoRA 4-bit base (CUDA), '' = full-precision base")
    dtype: str = C.field("auto", help="base weights dtype: auto (bf16 from sm80, fp16 on T4, fp32 CPU), fp32, bf16, fp16")
    attn_implementation: str = C.field("", help="'' = transformers default (sdpa); 'eager' for Gemma2 softcapping")
    lora_r: int = C.field(64, help="LoRA rank")
    lora_alpha: int = C.field(128, help="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = C.field(0.05, help="LoRA dropout")
    target_modules: list[str] = C.field(["all-linear"], help="LoRA targets; all-linear = every linear layer")
    gradient_checkpointing: bool = C.field(False, help="trade compute for memory (70B: true)")


@dataclasses.dataclass
class TrainArgs:
    """Optimizer, schedule, batching and resume knobs shared by every training stage."""

    lr: float = C.field(1e-5, help="peak learning rate")
    epochs: float = C.field(1.0, help="epochs over the training rows")
    max_steps: int = C.field(-1, help="cap on optimizer steps (-1 = from epochs)")
    global_batch: int = C.field(64, help="rows per optimizer step over all processes")
    micro_batch: int = C.field(4, help="rows per forward pass per process")
    betas: list[float] = C.field([0.9, 0.95], help="AdamW betas")
    weight_decay: float = C.field(0.0, help="AdamW weight decay")
    grad_clip: float = C.field(1.0, help="max grad norm")
    min_lr_ratio: float = C.field(0.0, help="cosine floor as a fraction of lr")
    mixed_precision: str = C.field("auto", help="accelerate mixed precision: auto, no, bf16, fp16")
    stop_after: int = C.field(-1, help="testing aid: stop (as if killed) after N optimizer steps of this run")


def make_accelerator(grad_accum_steps: int, mixed_precision: str = "auto"):
    """Accelerator for this process. ``auto`` = bf16 from sm80, fp16 below (T4), none on CPU."""
    from accelerate import Accelerator

    # auto: by compute capability (dist.dtype_for_capability: bf16 from sm80, fp16 on T4, no on CPU)
    mixed_precision = mixed_precision_for(device_capability(), mixed_precision)
    # Some imported package (DeepSpeed / GPTQModel) turns on INFO logging; checkpoint chatter is not a log line.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    # cpu=True on a machine without CUDA: accelerate only goes multi-process on CPU (gloo) when told so;
    # otherwise every rank of a torchrun launch would silently train alone.
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum_steps, mixed_precision=mixed_precision,
                              cpu=not torch.cuda.is_available())
    if accelerator.num_processes != world_size():
        raise RuntimeError(f"launcher started {world_size()} processes but accelerate sees "
                           f"{accelerator.num_processes}: gradients would not be synchronised")
    _register_trainable_only_hooks(accelerator)
    return accelerator


def grad_accum_for(global_batch: int, micro_batch: int, world: int) -> int:
    """Accumulation steps so that micro_batch x world x steps == global_batch, whatever the process count."""
    per_step = micro_batch * world
    if global_batch % per_step:
        raise ValueError(f"global_batch {global_batch} is not a multiple of micro_batch {micro_batch} x "
                         f"processes {world}")
    return global_batch // per_step


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _register_trainable_only_hooks(accelerator) -> None:
    def save_hook(models, weights, output_dir):
        for model, state in zip(models, weights):
            trainable = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
            for key in list(state):
                if key.removeprefix("module.") not in trainable:  # DDP prefixes "module."
                    del state[key]

    accelerator.register_save_state_pre_hook(save_hook)


def build_optimizer(model, lr: float, betas: tuple[float, float], weight_decay: float, eps: float = 1e-8):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


def cosine_schedule(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Linear warmup then cosine decay to ``min_lr_ratio`` x peak (transformers' schedule, with a floor)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(accelerator, ckpt_dir: str | os.PathLike, loop_state: dict[str, Any]) -> None:
    """Write a complete resume point atomically: build ``<dir>.tmp``, then swap it in (rank 0)."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    kwargs = {"exclude_frozen_parameters": True} if is_deepspeed(accelerator) else {}
    accelerator.save_state(str(tmp), **kwargs)
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, loop_state)
        old = ckpt_dir.with_name(ckpt_dir.name + ".old")
        if ckpt_dir.exists():
            os.replace(ckpt_dir, old)
        os.replace(tmp, ckpt_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, ckpt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Restore a resume point if one is complete at ``ckpt_dir``; return its loop state or None."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / STATE_FILE).is_file():
        return None
    kwargs = {"load_module_strict": False} if is_deepspeed(accelerator) else {"strict": False}
    accelerator.load_state(str(ckpt_dir), **kwargs)
    from .readers import read_json

    return read_json(ckpt_dir / STATE_FILE, fix=f"delete {ckpt_dir} to restart this run from its beginning")


def save_adapter(accelerator, model, dest: str | os.PathLike) -> None:
    """Save the trainable adapter (LoRA + saved head) of a prepared model into ``dest``, built whole then
    renamed. Every rank must call it (ZeRO-3 gathers the weights); rank 0 writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_dir(dest) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)


def promote_files(src_dir: str | os.PathLike, out_dir: str | os.PathLike, remove: bool = False) -> None:
    """Copy every file of ``src_dir`` into ``out_dir`` (each through a temp name + rename), so the chosen
    adapter is the stage's result at the top level; ``remove`` deletes ``src_dir`` afterwards."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    for f in src_dir.iterdir():
        tmp = out_dir / f".{f.name}.tmp"
        shutil.copy2(f, tmp)
        os.replace(tmp, out_dir / f.name)
    if remove:
        shutil.rmtree(src_dir)


class StepLogger:
    """One fixed-format line per optimizer step on rank 0, and the same dict appended to a JSONL file."""

    def __init__(self, jsonl_path: str | os.PathLike, total_steps: int):
        self.path = Path(jsonl_path)
        self.total = total_steps
        self.t_last = time.perf_counter()

    def log(self, step: int, loss: float, parts: dict[str, float], lr: float, tokens: int, **extra: Any) -> dict:
        now = time.perf_counter()
        dt, self.t_last = now - self.t_last, now
        row = {"step": step, "loss": loss, **parts, "lr": lr, "dt": dt, "tok_s": tokens / max(dt, 1e-9), **extra}
        if is_main():
            parts_txt = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            print0(f"step {step:5d}/{self.total} | loss {loss:.4f} | {parts_txt} | lr {lr:.2e} | "
                   f"dt {dt * 1000:.0f}ms | tok/s {row['tok_s']:.0f}")
            append_jsonl(self.path, row)
        return row


def read_log(jsonl_path: str | os.PathLike) -> list[dict]:
    path = Path(jsonl_path)
    if not path.is_file():
        return []
    from .readers import read_jsonl

    return read_jsonl(path, fix="delete it (the curve restarts) or re-run the stage with force=true")


def truncate_log(jsonl_path: str | os.PathLike, upto_step: int) -> None:
    """On resume, drop log rows past the checkpoint so the JSONL shows one clean curve."""
    path = Path(jsonl_path)
    if is_main() and path.is_file():
        rows = [r for r in read_log(path) if r.get("step", 0) <= upto_step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
