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
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import config as C
from .dist import device_capability, is_main, mixed_precision_for, print0, world_size
from .io import append_jsonl, atomic_dir, atomic_write_json

STATE_FILE = "loop_state.json"
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


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
    report_to: str = C.field("none", help="experiment tracker through accelerate: none, tensorboard (offline, "
                                          "<out_dir>/tensorboard/), wandb, mlflow; log.jsonl is always written")

    def __post_init__(self) -> None:
        if self.report_to not in REPORT_TO:
            raise C.ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")


def deepspeed_launch() -> bool:
    """True when the launcher asked for DeepSpeed (``accelerate launch`` with a ``distributed_type: DEEPSPEED``
    config sets ``ACCELERATE_USE_DEEPSPEED=true``, accelerate/utils/launch.py ``prepare_deepspeed_cmd_env``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(grad_accum_steps: int, mixed_precision: str = "auto", *, micro_batch: int | None = None,
                     grad_clip: float | None = None, report_to: str = "none",
                     project_dir: str | os.PathLike | None = None):
    """Accelerator for this process. ``auto`` = bf16 from sm80, fp16 below (T4), none on CPU.

    Under a DeepSpeed launch the stage's own numbers go into DeepSpeed's config *before* ``prepare``:
    ``train_micro_batch_size_per_gpu`` (accelerate 1.15 ``_prepare_deepspeed`` raises without it when no
    DataLoader is prepared), ``gradient_accumulation_steps`` (else ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``
    or the config file would win and the global batch shrink) and ``gradient_clipping`` (under DeepSpeed
    ``accelerator.clip_grad_norm_`` only reports the norm; DeepSpeed clips inside its step).
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    # auto: by compute capability (dist.dtype_for_capability: bf16 from sm80, fp16 on T4, no on CPU)
    mixed_precision = mixed_precision_for(device_capability(), mixed_precision)
    # Some imported package (DeepSpeed / GPTQModel) turns on INFO logging; checkpoint chatter is not a log line.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {}
    if report_to != "none":
        # TensorBoard writes its event files under <out_dir>/tensorboard/<stage>/ (offline; nothing is sent).
        logging_dir = Path(project_dir) / "tensorboard" if project_dir and report_to == "tensorboard" else project_dir
        kwargs.update(log_with=report_to, project_dir=str(logging_dir) if logging_dir else None)
    cuda = torch.cuda.is_available()
    if deepspeed_launch() and not cuda:
        # DeepSpeed on CPU (its CPU accelerator, deepspeed/accelerator/cpu_accelerator.py: gloo unless oneCCL
        # is installed). accelerate only keeps the DEEPSPEED type with cpu=False (state.py: `... == "true" and
        # not cpu`), and with cpu=False and no CUDA it picks no backend, so every rank would count itself as
        # process 0 of 1: name gloo explicitly (docs/architecture.md, "DeepSpeed on CPU").
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        cpu = False
    else:
        # cpu=True on a machine without CUDA: accelerate only goes multi-process on CPU (gloo) when told so;
        # otherwise every rank of a torchrun launch would silently train alone.
        cpu = not cuda
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum_steps, mixed_precision=mixed_precision,
                              cpu=cpu, **kwargs)
    if deepspeed_launch() and not is_deepspeed(accelerator):
        raise RuntimeError(f"launched with DeepSpeed but accelerate set up {accelerator.distributed_type}: "
                           "the DeepSpeed config would be ignored")
    if accelerator.num_processes != world_size():
        raise RuntimeError(f"launcher started {world_size()} processes but accelerate sees "
                           f"{accelerator.num_processes}: gradients would not be synchronised")
    # ACCELERATE_GRADIENT_ACCUMULATION_STEPS (accelerate launch --gradient_accumulation_steps) overrides the
    # constructor argument (accelerator.py, parse_choice_from_env): the stage's global batch wins.
    accelerator.gradient_accumulation_steps = grad_accum_steps
    if is_deepspeed(accelerator):
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        if micro_batch is None:
            raise ValueError("DeepSpeed needs the micro-batch size: make_accelerator(..., micro_batch=)")
        ds["train_micro_batch_size_per_gpu"] = micro_batch
        ds["gradient_accumulation_steps"] = grad_accum_steps
        ds["train_batch_size"] = micro_batch * grad_accum_steps * accelerator.num_processes
        if grad_clip is not None:
            ds["gradient_clipping"] = float(grad_clip)  # 0 = off, as DeepSpeed reads it
    else:
        _register_trainable_only_hooks(accelerator)
    return accelerator


def check_global_batch(accelerator, global_batch: int, micro_batch: int, grad_accum_steps: int) -> None:
    """Refuse to train with any other global batch than the configured one (asserted after ``prepare``)."""
    n = accelerator.num_processes
    seen = {"accelerate accumulation": accelerator.gradient_accumulation_steps}
    if is_deepspeed(accelerator):
        ds = accelerator.deepspeed_config
        seen.update({"DeepSpeed micro-batch": ds["train_micro_batch_size_per_gpu"],
                     "DeepSpeed accumulation": ds["gradient_accumulation_steps"],
                     "DeepSpeed train_batch_size / processes": ds["train_batch_size"] // n})
    want = {"accelerate accumulation": grad_accum_steps, "DeepSpeed micro-batch": micro_batch,
            "DeepSpeed accumulation": grad_accum_steps,
            "DeepSpeed train_batch_size / processes": micro_batch * grad_accum_steps}
    bad = [f"{k} {v} (expected {want[k]})" for k, v in seen.items() if v != want[k]]
    if bad or micro_batch * grad_accum_steps * n != global_batch:
        raise RuntimeError(f"global batch is not {global_batch} = micro_batch {micro_batch} x accumulation "
                           f"{grad_accum_steps} x processes {n}: " + "; ".join(bad))


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
    # save_state has no barrier at its end (accelerate 1.15 accelerator.py): without this one rank 0 renamed
    # the folder while rank 1 was still writing random_states_1.pkl into it ("Parent directory
    # .../checkpoint.tmp does not exist", the 2-process CI failure).
    accelerator.wait_for_everyone()
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


def trainable_state(accelerator, model) -> dict[str, torch.Tensor] | None:
    """The trainable tensors (LoRA + saved head) of a prepared model on rank 0 (None elsewhere), without
    a full-model state dict: ``accelerator.get_state_dict`` clones every frozen weight on every rank (a 4-bit
    70B on 8 ranks: ~300 GB of host RAM per save). Under ZeRO-3 only the trainable shards are gathered;
    under ZeRO-2 every rank holds the full (updated) parameters already."""
    unwrapped = accelerator.unwrap_model(model)
    params = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    if is_deepspeed(accelerator) and any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in params} if accelerator.is_main_process else None
    return {n: p.detach().cpu().clone() for n, p in params} if accelerator.is_main_process else None


def save_adapter(accelerator, model, dest: str | os.PathLike,
                 write: Callable[[Path], None] | None = None) -> None:
    """Save the trainable adapter (LoRA + saved head) of a prepared model into ``dest``, built whole then
    renamed; ``write(folder)`` adds files beside it (e.g. oof.csv) before the rename. Every rank must call it
    (ZeRO-3 gathers the trainable weights); rank 0 writes."""
    state_dict = trainable_state(accelerator, model)
    if accelerator.is_main_process:
        with atomic_dir(dest) as tmp:
            # save_embedding_layers=False: a LoRA on lm_head would otherwise copy the frozen embedding matrix.
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, save_embedding_layers=False)
            if write is not None:
                write(Path(tmp))
    accelerator.wait_for_everyone()


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


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepLogger:
    """One fixed-format line per optimizer step on rank 0 (with elapsed time and ETA), the same dict appended
    to a JSONL file and sent to accelerate's trackers; a tqdm bar when stdout is a terminal."""

    def __init__(self, jsonl_path: str | os.PathLike, total_steps: int, start_step: int = 0, accelerator=None):
        self.path = Path(jsonl_path)
        self.total = total_steps
        self.start_step = start_step
        self.accelerator = accelerator
        self.t_start = self.t_last = time.perf_counter()
        self.bar = None
        if is_main() and sys.stdout.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=False)

    def log(self, step: int, loss: float, parts: dict[str, float], lr: float, tokens: int, **extra: Any) -> dict:
        now = time.perf_counter()
        dt, self.t_last = now - self.t_last, now
        elapsed = now - self.t_start
        done = max(step - self.start_step, 1)
        eta = elapsed / done * max(self.total - step, 0)  # this run's pace (a resumed run restarts the clock)
        row = {"step": step, "loss": loss, **parts, "lr": lr, "dt": dt, "tok_s": tokens / max(dt, 1e-9), **extra,
               "elapsed_s": round(elapsed, 3), "eta_s": round(eta, 3)}
        if is_main():
            parts_txt = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            line = (f"step {step:5d}/{self.total} | loss {loss:.4f} | {parts_txt} | lr {lr:.2e} | "
                    f"dt {dt * 1000:.0f}ms | tok/s {row['tok_s']:.0f} | elapsed {_hms(elapsed)} | eta {_hms(eta)}")
            if self.bar is not None:
                self.bar.write(line)
                self.bar.update(1)
            else:
                print0(line)
            append_jsonl(self.path, row)
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"},
                                 step=step)
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
