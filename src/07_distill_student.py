"""Stage 7: distill the student on one fold from the teachers' logits (CE + KL + cos per teacher).

Reads   data/processed_data/<student>fold<k>/train.parquet with logits_<teacher> columns (stage 6, or the
        stored logits the seed ships), data/processed_data/<student>fold<k>/dev.parquet,
        model_path/<student>/, model_save/<student>_ut/ (post-pretrained adapter, optional)
Writes  model_save/<student>fold<k>/  adapter (best valid log loss; score head via modules_to_save) and
        oof.csv (that checkpoint's dev-row probabilities), best/, last/, metrics.json, log.jsonl, config.yaml,
        checkpoint/, DONE.json, tensorboard/ (report_to=tensorboard); model_save/cv_table.md.

Loss (arena_distill.losses.distill_loss):
    (CE(s, y) + sum_t [KL(log_softmax(s/T) || softmax(t/T)) + CosineEmbedding(softmax(t/T), softmax(s/T), +1)])
    / (1 + 2 * n_teachers)
which with two teachers is the seed's (CE + KL1 + cos1 + KL2 + cos2) / 5. `teachers=[]` trains on CE
alone (the no-distillation baseline); each part is logged separately at every step.

Launch (repo root):
    python src/07_distill_student.py --config configs/tiny.yaml fold=0                       # CPU / 1 GPU
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 \\
        src/07_distill_student.py --config configs/a100x8.yaml fold=0                        # 8 GPUs
    python src/07_distill_student.py --config configs/tiny.yaml fold=0 teachers=[] \\
        out_dir=model_save/tiny_gemma2fold0_nodistill                                       # ablation
(`sh run_pipeline.sh <fold>` and `sh src_fast/run_pipeline_fast.sh <fold>` call it.)

Batches, schedule and resume through arena_distill.engine, as stage 4: length-grouped micro-batches
(longest first), gradient accumulation to `global_batch`, warmup + cosine, checkpoints every `save_every`
optimizer steps; re-running the command after a kill -9 continues from the last checkpoint with the same
loss curve and adapter bytes. DeepSpeed ZeRO-2 on one CPU process (what the tests run):
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 1 \\
        src/07_distill_student.py --config configs/tiny.yaml fold=0 Done runs are skipped unless
force=true.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from arena_distill import config as C
from arena_distill import engine
from arena_distill.batching import collate
from arena_distill.dist import is_main, print0
from arena_distill.losses import distill_loss
from arena_distill.io import (atomic_write_json, atomic_write_text, check_done, fingerprint, is_done, mark_done,
                              require, require_done, run_stage, StageInputError)
from arena_distill.metrics import cv_table, prior_log_loss
from arena_distill.models import add_lora, describe, init_lora_from_adapter, load_classifier, load_tokenizer, \
    model_folder, warn_if_cpu_quant
from arena_distill.train_utils import LoraArgs, TrainArgs, promote_files
from arena_distill.readers import read_parquet


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class DistillConfig(LoraArgs, TrainArgs):
    fold: int = C.field(0, help="fold to train (its rows are the validation side)")
    seed: int = C.field(2025, help="base seed (each rank uses seed + rank)")
    n_folds: int = C.field(5, help="number of folds (for the CV table)")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data (stage 2)")
    model_dir: str = C.field("model_path", help="base checkpoints")
    save_dir: str = C.field("model_save", help="where adapters go")
    teachers: list[str] = C.field([], help="teachers whose logits_<name> columns are distilled, in loss order; [] = CE only")
    student: str = C.field("", help="student name: a folder under model_dir (e.g. Gemma2_9b)")
    temperature: float = C.field(1.0, help="distillation temperature T")
    w_ce: float = C.field(1.0, help="weight of the CE term (divisor stays 1 + 2 * n_teachers)")
    w_kl: float = C.field(1.0, help="weight of each KL term")
    w_cos: float = C.field(1.0, help="weight of each cosine term")
    out_dir: str = C.field("", help="output folder; default <save_dir>/<student>fold<fold>")
    init_from_post_pretrain: bool = C.field(True, help="start LoRA from <save_dir>/<model>_ut when it exists")
    lr: float = C.field(5e-5, help="peak learning rate")
    epochs: float = C.field(2.0, help="epochs over the fold's training side")
    warmup_steps: int = C.field(100, help="linear warmup steps")
    eval_every: int = C.field(200, help="evaluate on the valid side every N optimizer steps (and at the end)")
    eval_batch: int = C.field(16, help="rows per evaluation batch")
    eval_max_tokens: int = C.field(0, help="token budget per evaluation batch (0 = rows only)")
    save_every: int = C.field(100, help="write a resume checkpoint every N optimizer steps")
    force: bool = C.field(False, help="retrain even if DONE.json exists")

    def __post_init__(self) -> None:
        if not self.student:
            raise C.ConfigError("student= is required (a folder name under model_dir)")
        if self.temperature <= 0:
            raise C.ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.fold < 0 or self.fold >= self.n_folds:
            raise C.ConfigError(f"fold={self.fold} outside 0..{self.n_folds - 1}")
        if self.quant not in ("", "nf4", "int8"):
            raise C.ConfigError(f"quant must be '', nf4 or int8, got {self.quant!r}")
        super().__post_init__()


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(DistillConfig, "distill", argv)
    data_dir = Path(cfg.processed_dir) / f"{cfg.student}fold{cfg.fold}"
    out = Path(cfg.out_dir or Path(cfg.save_dir) / f"{cfg.student}fold{cfg.fold}")
    fp = fingerprint(cfg, exclude=("eval_batch", "eval_max_tokens"))
    if check_done(out, fp, cfg.force, "distill"):
        return {"skipped": True, "out": str(out)}
    if cfg.force and is_main() and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- init
    require_done(data_dir, "sh run_data.sh", what="processed fold data")
    base = model_folder(cfg.model_dir, cfg.student)
    accelerator, accum, seed = engine.setup(cfg, out, tag="distill")
    print0(f"[distill] model={cfg.student} fold={cfg.fold} teachers={cfg.teachers}")

    # -------------------------------------------------------------------------------------------- data
    train = read_parquet(require(data_dir / "train.parquet", "sh run_data.sh"), fix="re-run: sh run_data.sh")
    dev = read_parquet(require(data_dir / "dev.parquet", "sh run_data.sh"), fix="re-run: sh run_data.sh")
    train_ids, train_labels = train["input_ids"].tolist(), train["label"].to_numpy(np.int64)
    dev_ids, dev_labels = dev["input_ids"].tolist(), dev["label"].to_numpy(np.int64)
    teacher_logits = []
    for name in cfg.teachers:
        column = f"logits_{name}"
        if column not in train.columns:
            raise StageInputError(f"{data_dir}/train.parquet has no column {column} -> run first: "
                                  f"python src/05_teacher_logits.py model={name} fold={cfg.fold} && "
                                  f"python src/06_merge_logits.py fold={cfg.fold}  (or sh run_pipeline.sh {cfg.fold})")
        values = np.stack(train[column].to_numpy()).astype(np.float32)
        if values.shape != (len(train), 3) or not np.isfinite(values).all():
            raise StageInputError(f"{data_dir}/train.parquet column {column}: expected finite [n, 3] logits, "
                                  f"got shape {values.shape}, {int((~np.isfinite(values)).sum())} non-finite")
        teacher_logits.append(torch.from_numpy(values))
    plan = engine.plan_steps(len(train), cfg, accum, where=f"{data_dir}/train.parquet")
    print0(f"[distill] train rows {len(train):,}  valid rows {len(dev):,}  steps/epoch {plan.steps_per_epoch}  "
           f"total steps {plan.total_steps}")

    # ------------------------------------------------------------------------------------------- model
    tokenizer = load_tokenizer(base)
    model = load_classifier(base, dtype=cfg.dtype, quant=warn_if_cpu_quant(cfg.quant),
                            attn_implementation=cfg.attn_implementation or None, pad_token_id=tokenizer.pad_token_id)
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=cfg.target_modules, gradient_checkpointing=cfg.gradient_checkpointing)
    ut_dir = Path(cfg.save_dir) / f"{cfg.student}_ut"
    init_from = None
    if cfg.init_from_post_pretrain and is_done(ut_dir):
        n = init_lora_from_adapter(model, ut_dir, drop_head=True)
        init_from = str(ut_dir)
        print0(f"[distill] LoRA initialised from post-pretrained adapter {ut_dir} ({n} tensors, head dropped)")
    print0(f"[distill] {describe(model)}")
    model, optimizer, scheduler = engine.prepare(accelerator, model, cfg, plan, warmup_steps=cfg.warmup_steps)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, out, seed=seed, base_model=str(base), init_adapter=init_from)
    part_names = ["ce"] + [f"{kind}_{name}" for name in cfg.teachers for kind in ("kl", "cos")]
    pad_id, device = tokenizer.pad_token_id, accelerator.device

    def loss_fn(micro: np.ndarray):
        ids, mask = collate([train_ids[i] for i in micro], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        loss, parts = distill_loss(logits, torch.as_tensor(train_labels[micro], device=device),
                                   [t[micro] for t in teacher_logits], cfg.temperature, cfg.w_ce, cfg.w_kl, cfg.w_cos)
        return loss, dict(zip(part_names, parts.values())), int(mask.sum())  # ce, kl_0, cos_0, kl_1, ...

    evaluate = engine.classifier_evaluation(accelerator, model, dev_ids, dev_labels, dev["id"].to_numpy(), pad_id,
                                            batch_size=cfg.eval_batch, max_tokens=cfg.eval_max_tokens or None)

    # -------------------------------------------------------------------------------------------- loop
    result = engine.train(accelerator, model, optimizer, scheduler, plan, lengths=[len(x) for x in train_ids],
                          loss_fn=loss_fn, part_names=part_names, seed=cfg.seed, out=out, tag="distill", cfg=cfg,
                          evaluate=evaluate, eval_every=cfg.eval_every, best_key="valid_log_loss",
                          save_every=cfg.save_every, tracker_config=dataclasses.asdict(cfg))
    if result.stopped:
        return {"stopped": True, "step": result.step, "out": str(out)}

    # ------------------------------------------------------------------------------------ save/summary
    summary = {}
    if is_main():
        best = result.best
        promote_files(out / "best", out)  # the best adapter (+ its oof.csv) is the stage's result, at the top level
        rows = read_parquet(data_dir / "train.parquet", columns=["label"])["label"]
        summary = {"model": cfg.student, "fold": cfg.fold, "valid_log_loss": best["valid_log_loss"],
                   "valid_accuracy": best["valid_accuracy"], "best_step": best["step"], "n_valid": len(dev),
                   "n_train": len(train), "prior_log_loss": prior_log_loss(rows, dev_labels),
                   "total_steps": plan.total_steps, "train_seconds_this_run": round(result.seconds, 1),
                   "base_model": str(base), "init_adapter": init_from, "teachers": cfg.teachers,
                   "temperature": cfg.temperature}
        atomic_write_json(out / "metrics.json", summary)
        mark_done(out, fingerprint=fp, stage="distill", **{k: summary[k] for k in ("valid_log_loss", "best_step")})
        names = [*cfg.teachers, *([cfg.student] if cfg.student else [])] or [cfg.student]
        atomic_write_text(Path(cfg.save_dir) / "cv_table.md", cv_table(cfg.save_dir, names, cfg.n_folds))
        print0(f"[distill] done: valid log loss {summary['valid_log_loss']:.4f} (prior "
               f"{summary['prior_log_loss']:.4f}), accuracy {summary['valid_accuracy']:.3f}, best step "
               f"{summary['best_step']} -> {out}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    run_stage(main)
