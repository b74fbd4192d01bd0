"""Stage 3: post-pretrain one model on the UltraFeedback-derived "UT" data (the seed's first step).

Each model (both teachers and the student) is trained 1 epoch with LoRA on the same 3-class task over
the UT pairs (lr 1e-5). The LoRA adapter is kept and becomes the starting point of that model's fold
training (stages 4 and 7 load it with the score head dropped, as the seed throws the head away).

Reads   data/processed_data/<model>_ut/train.parquet (stage 2), model_path/<model>/
Writes  model_save/<model>_ut/  adapter_model.safetensors + adapter_config.json, log.jsonl, config.yaml,
        checkpoint/ (resume state), DONE.json

Launch (repo root):
    python src/03_post_pretrain.py --config configs/tiny.yaml model=tiny_llama               # CPU / 1 GPU
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 \\
        src/03_post_pretrain.py --config configs/a100x8.yaml model=llama3_70b               # 8 GPUs
(`sh run_pipeline.sh <fold>` runs it first for every model whose adapter is missing.)

Resume: as stages 4 and 7 (checkpoint every `save_every` optimizer steps; re-run the same command).
Done runs are skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from arena_distill import config as C
from arena_distill.batching import collate, length_grouped_batches
from arena_distill.dist import is_main, print0, rank, seed_everything, world_size
from arena_distill.io import (atomic_write_json, check_done, fingerprint, mark_done, require, require_done,
                              run_stage, StageInputError)
from arena_distill.models import add_lora, describe, load_classifier, load_tokenizer, model_folder, warn_if_cpu_quant
from arena_distill.train_utils import (LoraArgs, StepLogger, TrainArgs, build_optimizer, cosine_schedule,
                                       grad_accum_for, load_checkpoint, make_accelerator, promote_files,
                                       save_adapter, save_checkpoint, truncate_log)
from arena_distill.readers import read_parquet


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class PostPretrainConfig(LoraArgs, TrainArgs):
    model: str = C.field("", help="model name: a folder under model_dir (a teacher or the student)")
    seed: int = C.field(2025, help="base seed (each rank uses seed + rank)")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data (stage 2)")
    model_dir: str = C.field("model_path", help="base checkpoints")
    save_dir: str = C.field("model_save", help="where adapters go")
    out_dir: str = C.field("", help="output folder; default <save_dir>/<model>_ut")
    student: str = C.field("", help="the profile's student: it uses student_quant / student_attn_implementation")
    student_quant: str = C.field("", help="the student's base quantization ('' = bf16 LoRA, as the seed)")
    student_attn_implementation: str = C.field("", help="attention for the student (e.g. eager for Gemma2)")
    warmup_steps: int = C.field(100, help="linear warmup steps")
    save_every: int = C.field(100, help="write a resume checkpoint every N optimizer steps")
    force: bool = C.field(False, help="retrain even if DONE.json exists")

    def __post_init__(self) -> None:
        if not self.model:
            raise C.ConfigError("model= is required (a folder name under model_dir)")
        for key in ("quant", "student_quant"):
            if getattr(self, key) not in ("", "nf4", "int8"):
                raise C.ConfigError(f"{key} must be '', nf4 or int8, got {getattr(self, key)!r}")


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(PostPretrainConfig, "post_pretrain", argv)
    data_dir = Path(cfg.processed_dir) / f"{cfg.model}_ut"
    out = Path(cfg.out_dir or Path(cfg.save_dir) / f"{cfg.model}_ut")
    fp = fingerprint(cfg)
    if check_done(out, fp, cfg.force, "post_pretrain"):
        return {"skipped": True, "out": str(out)}
    if cfg.force and is_main() and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- init
    require_done(data_dir, "sh run_data.sh", what="processed UT data")
    base = model_folder(cfg.model_dir, cfg.model)
    world = world_size()
    accum = grad_accum_for(cfg.global_batch, cfg.micro_batch, world)
    accelerator = make_accelerator(accum, cfg.mixed_precision)
    seed = seed_everything(cfg.seed)
    print0(f"[post_pretrain] model={cfg.model} processes={world} device={accelerator.device} "
           f"micro_batch={cfg.micro_batch} accum={accum} global_batch={cfg.global_batch} seed={seed}")

    # -------------------------------------------------------------------------------------------- data
    train = read_parquet(require(data_dir / "train.parquet", "sh run_data.sh"), fix="re-run: sh run_data.sh")
    train_ids, train_labels = train["input_ids"].tolist(), train["label"].to_numpy(np.int64)
    micro_per_epoch = (len(train) // cfg.micro_batch) // (accum * world) * (accum * world)
    steps_per_epoch = micro_per_epoch // (accum * world)
    total_steps = int(steps_per_epoch * cfg.epochs) if cfg.max_steps < 0 else cfg.max_steps
    if total_steps <= 0:
        raise StageInputError(f"{data_dir}/train.parquet has {len(train)} rows: fewer than one global batch "
                              f"({cfg.global_batch})")
    print0(f"[post_pretrain] train rows {len(train):,}  steps/epoch {steps_per_epoch}  "
           f"total steps {total_steps}")

    # ------------------------------------------------------------------------------------------- model
    tokenizer = load_tokenizer(base)
    is_student = cfg.model == cfg.student
    quant = cfg.student_quant if is_student else cfg.quant
    attn = (cfg.student_attn_implementation if is_student else cfg.attn_implementation) or None
    model = load_classifier(base, dtype=cfg.dtype, quant=warn_if_cpu_quant(quant), attn_implementation=attn,
                            pad_token_id=tokenizer.pad_token_id)
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=cfg.target_modules, gradient_checkpointing=cfg.gradient_checkpointing)
    print0(f"[post_pretrain] {describe(model)}")
    optimizer = build_optimizer(model, cfg.lr, tuple(cfg.betas), cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    # ------------------------------------------------------------------------------------------ resume
    ckpt_dir = out / "checkpoint"
    state = load_checkpoint(accelerator, ckpt_dir) or {"step": 0}
    step = state["step"]
    if step:
        print0(f"[post_pretrain] resumed from {ckpt_dir} at step {step}")
        truncate_log(out / "log.jsonl", step)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, out, seed=seed, base_model=str(base))
    logger = StepLogger(out / "log.jsonl", total_steps)
    pad_id = tokenizer.pad_token_id

    # -------------------------------------------------------------------------------------------- loop
    model.train()
    t0, steps_this_run, plan_epoch, batches = time.perf_counter(), 0, -1, []
    logger_last_ce = [float("nan")]
    lengths = [len(x) for x in train_ids]
    while step < total_steps:
        epoch = step // steps_per_epoch
        if epoch != plan_epoch:  # the plan depends only on (seed, epoch): a resumed run rebuilds the same one
            batches = length_grouped_batches(lengths, cfg.micro_batch, seed=cfg.seed, epoch=epoch)[:micro_per_epoch]
            plan_epoch = epoch
        in_epoch = step - epoch * steps_per_epoch
        group = batches[in_epoch * accum * world:(in_epoch + 1) * accum * world]
        loss_sum, tokens = torch.zeros((), device=accelerator.device), 0
        for micro in group[rank()::world]:
            ids, mask = collate([train_ids[i] for i in micro], pad_id)
            labels = torch.as_tensor(train_labels[micro], device=accelerator.device)
            with accelerator.accumulate(model):
                logits = model(input_ids=ids.to(accelerator.device), attention_mask=mask.to(accelerator.device)).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            loss_sum += loss.detach() / accum
            tokens += int(mask.sum())
        scheduler.step()
        step += 1
        steps_this_run += 1
        loss_mean = accelerator.reduce(loss_sum, "mean").item()
        row = {"ce": loss_mean}
        logger.log(step, loss_mean, row, scheduler.get_last_lr()[0], tokens * world, epoch=epoch)
        logger_last_ce[0] = loss_mean
        if step % cfg.save_every == 0 or step == total_steps:
            save_checkpoint(accelerator, ckpt_dir, {"step": step})
        if cfg.stop_after > 0 and steps_this_run >= cfg.stop_after and step < total_steps:
            print0(f"[post_pretrain] stop_after={cfg.stop_after}: stopping at step {step} (resume by re-running)")
            save_checkpoint(accelerator, ckpt_dir, {"step": step})
            return {"stopped": True, "step": step, "out": str(out)}

    # ------------------------------------------------------------------------------------ save/summary
    save_adapter(accelerator, model, out / "adapter")
    accelerator.wait_for_everyone()
    summary = {}
    if is_main():
        promote_files(out / "adapter", out, remove=True)  # the adapter is the stage's result, at the top level
        summary = {"model": cfg.model, "n_train": len(train), "total_steps": total_steps,
                   "final_ce": logger_last_ce[0], "train_seconds_this_run": round(time.perf_counter() - t0, 1),
                   "base_model": str(base)}
        atomic_write_json(out / "metrics.json", summary)
        mark_done(out, fingerprint=fp, stage="post_pretrain", final_ce=summary["final_ce"])
        print0(f"[post_pretrain] done: {total_steps} steps, last ce {summary['final_ce']:.4f} -> {out}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    run_stage(main)
