"""The one training loop of stages 3, 4, 7 and 22: accumulation, clipping, schedule, eval, checkpoints, resume.

A stage builds its data, model and loss, then hands them over:

    accelerator, accum, seed = engine.setup(cfg, out, tag="teacher")
    plan = engine.plan_steps(len(train), cfg, accum, where=...)
    model, optimizer, scheduler = engine.prepare(accelerator, model, cfg, plan, warmup_steps=cfg.warmup_steps)
    result = engine.train(accelerator, model, optimizer, scheduler, plan, lengths=..., loss_fn=..., ...)

Why our own loop and not HF ``Trainer`` (docs/architecture.md, "Training engine"): the guarantees the
project is tested on are (a) a ``kill -9`` followed by the same command reproduces the uninterrupted loss
curve and adapter bytes, (b) the loss is the seed's distillation loss to the last bit, (c) the batch plan is
length-grouped, deterministic per (seed, epoch), longest batch first, and cut to whole optimizer steps so
that every rank sees the same number of micro-batches. All three are one screen of code here; under
``Trainer`` they are a custom sampler, a ``compute_loss`` override, a resume path that replays the data
loader, and DeepSpeed "auto" values filled out of sight. The DeepSpeed settings Trainer would fill
(micro-batch, accumulation, clipping) are set explicitly by ``train_utils.make_accelerator`` instead.

Granularity of resume: one optimizer step (checkpoints every ``save_every`` steps, and at the end).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .batching import length_grouped_batches
from .dist import is_main, print0, rank, seed_everything, world_size
from .io import StageInputError
from .models import hold_trainables_in_fp32
from .train_utils import (StepLogger, build_optimizer, check_global_batch, cosine_schedule, grad_accum_for,
                          is_deepspeed, load_checkpoint, make_accelerator, save_adapter, save_checkpoint,
                          truncate_log)

# loss_fn(micro-batch row indices) -> (loss to backpropagate, {part name: detached scalar}, real tokens)
LossFn = Callable[[np.ndarray], "tuple[torch.Tensor, dict[str, torch.Tensor | float], int]"]


@dataclasses.dataclass
class Evaluation:
    """What one evaluation returns: values logged on the step's row, and optionally a writer of files that
    belong beside the adapter saved for this evaluation (e.g. ``oof.csv``); it runs on rank 0 only."""

    metrics: dict[str, float]
    write: Callable[[Path], None] | None = None


@dataclasses.dataclass
class StepPlan:
    """Sizes of the run. ``total_steps`` is the length the schedule is planned for; ``stop_step`` is where this
    training ends (earlier when a stage runs part of the schedule, as the seed's teachers: 1 of 2 epochs)."""

    micro_batch: int
    accum: int
    world: int
    micro_per_epoch: int   # micro-batches per epoch over all ranks, cut to whole optimizer steps
    steps_per_epoch: int
    total_steps: int
    stop_step: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accum * self.world


@dataclasses.dataclass
class TrainResult:
    step: int                      # optimizer steps done
    stopped: bool                  # stop_after hit before stop_step (resume by re-running)
    best: dict | None              # {"step", **metrics} of the best evaluation (when best_key is given)
    last: dict | None              # {"step", **metrics} of the evaluation at stop_step
    seconds: float                 # wall time of this run's loop


# ------------------------------------------------------------------------------------------------ setup
def setup(cfg: Any, out: Path, tag: str):
    """Accelerator (DeepSpeed settings from ``cfg``), accumulation steps, seed; prints the batch arithmetic."""
    world = world_size()
    accum = grad_accum_for(cfg.global_batch, cfg.micro_batch, world)
    accelerator = make_accelerator(accum, cfg.mixed_precision, micro_batch=cfg.micro_batch, grad_clip=cfg.grad_clip,
                                   report_to=cfg.report_to, project_dir=out)
    seed = seed_everything(cfg.seed)
    print0(f"[{tag}] processes={world} device={accelerator.device} distributed={accelerator.distributed_type.value} "
           f"micro_batch={cfg.micro_batch} accum={accum} global_batch={cfg.global_batch} seed={seed}")
    return accelerator, accum, seed


def plan_steps(n_rows: int, cfg: Any, accum: int, *, where: str, epochs: float | None = None,
               epochs_run: float | None = None, round_up: bool = False) -> StepPlan:
    """Optimizer steps from the row count. ``epochs`` (default ``cfg.epochs``) sizes the schedule,
    ``epochs_run`` (default: the same) where training stops; ``cfg.max_steps`` > 0 overrides both."""
    world = world_size()
    micro_per_epoch = (n_rows // cfg.micro_batch) // (accum * world) * (accum * world)
    steps_per_epoch = micro_per_epoch // (accum * world)
    epochs = cfg.epochs if epochs is None else epochs
    epochs_run = epochs if epochs_run is None else epochs_run
    to_steps = (lambda e: math.ceil(steps_per_epoch * e)) if round_up else (lambda e: int(steps_per_epoch * e))
    if cfg.max_steps > 0:
        total = stop = cfg.max_steps
    else:
        total, stop = to_steps(epochs), min(to_steps(epochs_run), to_steps(epochs))
    if steps_per_epoch <= 0 or total <= 0 or stop <= 0:
        raise StageInputError(f"{where} has {n_rows} rows: fewer than one global batch ({cfg.global_batch} = "
                              f"micro_batch {cfg.micro_batch} x accumulation {accum} x processes {world}); "
                              "lower global_batch or provide more rows")
    return StepPlan(cfg.micro_batch, accum, world, micro_per_epoch, steps_per_epoch, total, stop)


def prepare(accelerator, model, cfg: Any, plan: StepPlan, *, warmup_steps: int):
    """fp32 trainables, AdamW + warmup/cosine over ``plan.total_steps``, ``accelerator.prepare``; asserts the
    global batch the engine will run equals the configured one (DeepSpeed's view included)."""
    hold_trainables_in_fp32(model)
    optimizer = build_optimizer(model, cfg.lr, tuple(cfg.betas), cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, warmup_steps, plan.total_steps, cfg.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped by the loop once per optimizer step (not prepared: accelerate would step it
    # once per process per call); it is checkpointed with the rest.
    accelerator.register_for_checkpointing(scheduler)
    check_global_batch(accelerator, cfg.global_batch, cfg.micro_batch, plan.accum)
    return model, optimizer, scheduler


def batch_plan(lengths: Sequence[int], plan: StepPlan, seed: int, epoch: int) -> list[np.ndarray]:
    """This epoch's micro-batches (all ranks), deterministic in (seed, epoch), longest first, whole steps."""
    return length_grouped_batches(lengths, plan.micro_batch, seed=seed, epoch=epoch,
                                  longest_first=True)[:plan.micro_per_epoch]


# ------------------------------------------------------------------------------------------------- loop
def train(accelerator, model, optimizer, scheduler, plan: StepPlan, *, lengths: Sequence[int], loss_fn: LossFn,
          part_names: Sequence[str], seed: int, out: Path, tag: str, cfg: Any,
          evaluate: Callable[[int], Evaluation] | None = None, eval_every: int = 0, best_key: str | None = None,
          save_every: int = 100, tracker_config: dict | None = None,
          begin_step: Callable[[list[np.ndarray]], None] | None = None) -> TrainResult:
    """Run (or resume) training to ``plan.stop_step``.

    ``evaluate(step)`` runs on every rank every ``eval_every`` steps and at ``stop_step``.
    Writes under ``out``: ``log.jsonl`` (one row per optimizer step), ``checkpoint/`` (resume point),
    ``best/`` (adapter of the lowest ``best_key`` evaluation, with its ``Evaluation.write`` files) and
    ``last/`` (adapter at ``stop_step``, with the files of the evaluation there).
    ``begin_step(group)``, when given, sees every micro-batch of the coming optimizer step (all ranks) before
    the first forward: a loss normalised over the whole step (stage 22's ``loss_norm=token``) counts there.
    """
    ckpt_dir = out / "checkpoint"
    state = load_checkpoint(accelerator, ckpt_dir) or {"step": 0, "best": None, "last": None}
    step, best, last = state["step"], state.get("best"), state.get("last")
    if step:
        print0(f"[{tag}] resumed from {ckpt_dir} at step {step}")
        truncate_log(out / "log.jsonl", step)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    if accelerator.trackers == [] and cfg.report_to != "none":
        # A resumed TensorBoard run drops the events it logged after the checkpoint (SummaryWriter purge_step),
        # so the steps recomputed after a kill appear once, as in log.jsonl.
        init_kwargs = {"tensorboard": {"purge_step": step + 1}} if step and cfg.report_to == "tensorboard" else {}
        accelerator.init_trackers(tag, config=_flat(tracker_config or {}), init_kwargs=init_kwargs)
    logger = StepLogger(out / "log.jsonl", plan.stop_step, start_step=step, accelerator=accelerator)
    device, world, r = accelerator.device, plan.world, rank()
    group_size = plan.accum * world
    clip_here = cfg.grad_clip > 0 and not is_deepspeed(accelerator)  # DeepSpeed clips in its step (config)

    def run_eval(at_step: int) -> Evaluation:
        ev = evaluate(at_step)
        model.train()
        return ev

    model.train()
    t0, steps_this_run, plan_epoch, batches = time.perf_counter(), 0, -1, []
    final_eval: Evaluation | None = None
    stopped = False
    while step < plan.stop_step:
        epoch = step // plan.steps_per_epoch
        if epoch != plan_epoch:  # depends only on (seed, epoch): a resumed run rebuilds the same plan
            batches, plan_epoch = batch_plan(lengths, plan, seed, epoch), epoch
        in_epoch = step - epoch * plan.steps_per_epoch
        group = batches[in_epoch * group_size:(in_epoch + 1) * group_size]
        if begin_step is not None:
            begin_step(group)
        loss_sum = torch.zeros((), device=device)
        parts_sum = torch.zeros(len(part_names), device=device)
        tokens = 0
        for micro in group[r::world]:
            with accelerator.accumulate(model):
                loss, parts, n_tok = loss_fn(micro)
                accelerator.backward(loss)
                if clip_here and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().float() / plan.accum
            parts_sum += torch.tensor([float(parts[k]) for k in part_names], device=device) / plan.accum
            tokens += n_tok
        scheduler.step()
        step += 1
        steps_this_run += 1
        loss_mean = accelerator.reduce(loss_sum, "mean").item()
        row = dict(zip(part_names, accelerator.reduce(parts_sum, "mean").tolist()))
        if evaluate is not None and ((eval_every > 0 and step % eval_every == 0) or step == plan.stop_step):
            ev = run_eval(step)
            row.update(ev.metrics)
            if step == plan.stop_step:
                final_eval, last = ev, {"step": step, **ev.metrics}
            if best_key is not None and (best is None or ev.metrics[best_key] < best[best_key]):
                best = {"step": step, **ev.metrics}
                save_adapter(accelerator, model, out / "best", write=ev.write)
        logger.log(step, loss_mean, row, scheduler.get_last_lr()[0], tokens * world, epoch=epoch)
        if step % save_every == 0 or step == plan.stop_step:
            save_checkpoint(accelerator, ckpt_dir, {"step": step, "best": best, "last": last})
        if cfg.stop_after > 0 and steps_this_run >= cfg.stop_after and step < plan.stop_step:
            print0(f"[{tag}] stop_after={cfg.stop_after}: stopping at step {step} (resume by re-running)")
            save_checkpoint(accelerator, ckpt_dir, {"step": step, "best": best, "last": last})
            stopped = True
            break
    logger.close()
    if not stopped:
        if evaluate is not None and final_eval is None:
            # Killed after the final checkpoint but before the last adapter was written: the weights are
            # those of stop_step, so re-evaluating gives the same numbers and files.
            final_eval = run_eval(step)
            last = {"step": step, **final_eval.metrics}
        save_adapter(accelerator, model, out / "last", write=final_eval.write if final_eval else None)
    accelerator.wait_for_everyone()
    if cfg.report_to != "none":
        accelerator.end_training()
    return TrainResult(step=step, stopped=stopped, best=best, last=last, seconds=time.perf_counter() - t0)


def score_rows(accelerator, model, rows: Sequence[Sequence[int]], pad_id: int, *, batch_size: int,
               max_tokens: int | None = None, desc: str = "valid") -> np.ndarray:
    """Classifier logits of ``rows`` in row order, on every rank (evaluation inside training).

    Ranks score every ``world``-th batch and the results are gathered; under ZeRO-3 with several processes
    every forward pass is collective (parameters are gathered layer by layer), and shards can differ by one
    batch, so there every rank scores all rows instead (same results, no hang).
    """
    from accelerate.utils import gather_object

    from .scoring import score_classifier

    world = accelerator.num_processes
    zero3 = is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3 and world > 1
    shard = (0, 1) if zero3 else (rank(), world)
    idx, logits, _ = score_classifier(model, rows, pad_id, batch_size=batch_size, max_tokens=max_tokens,
                                      device=accelerator.device, desc=desc, shard=shard)
    if zero3 or world == 1:
        return logits[np.argsort(idx)]
    gathered = gather_object([(idx, logits)])
    all_idx = np.concatenate([g[0] for g in gathered])
    return np.concatenate([g[1] for g in gathered])[np.argsort(all_idx)]


def classifier_ce_loss(model, rows: Sequence[Sequence[int]], labels: np.ndarray, pad_id: int, device) -> LossFn:
    """The 3-class cross-entropy ``loss_fn`` of the classifier stages (post-pretrain, teachers)."""
    from .batching import collate

    def loss_fn(micro: np.ndarray):
        ids, mask = collate([rows[i] for i in micro], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(labels[micro], device=device))
        return loss, {"ce": loss.detach()}, int(mask.sum())
    return loss_fn


def classifier_evaluation(accelerator, model, rows: Sequence[Sequence[int]], labels: np.ndarray, ids: np.ndarray,
                          pad_id: int, *, batch_size: int, max_tokens: int | None) -> Callable[[int], Evaluation]:
    """The dev evaluation of the classifier stages (teachers, student): valid log loss/accuracy, and the
    evaluated checkpoint's ``oof.csv`` beside its adapter."""
    from .metrics import classification_metrics
    from .oof import oof_writer

    def evaluate(step: int) -> Evaluation:
        all_logits = score_rows(accelerator, model, rows, pad_id, batch_size=batch_size, max_tokens=max_tokens)
        m = classification_metrics(all_logits, labels)
        return Evaluation({"valid_log_loss": m["log_loss"], "valid_accuracy": m["accuracy"]},
                          write=oof_writer(ids, labels, all_logits, step))
    return evaluate


def _flat(config: dict) -> dict:
    """Tracker hyper-parameters: scalars as they are, anything else as text (TensorBoard refuses lists)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
