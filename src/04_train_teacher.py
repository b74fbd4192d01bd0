"""Stage 4: fine-tune one teacher on one fold as a 3-class classifier with LoRA (QLoRA on GPU).

Reads   data/processed_data/<model>fold<k>/{train,dev}.parquet   (stage 2, `sh run_data.sh`)
        model_path/<model>/                                      (base checkpoint)
        model_save/<model>_ut/                                   (post-pretrained adapter, stage 3, optional)
Writes  model_save/<model>fold<k>/  adapter_model.safetensors + adapter_config.json + oof.csv of the kept
        checkpoint (`logits_from`: last or best valid log loss; the score head is saved through
        modules_to_save), best/, last/, metrics.json, log.jsonl, config.yaml, checkpoint/ (resume state),
        DONE.json, tensorboard/ (report_to=tensorboard); and model_save/cv_table.md.

Schedule (the seed's teacher script): warmup + cosine planned over `epochs` (2), training stops after
`epochs_run` (1: the seed `break`s at the end of its first epoch) and the last step's adapter is kept
(`logits_from=last`: the seed scores `epoch_0_model`). `epochs_run=-1 logits_from=best` trains both
epochs and keeps the lowest-valid-loss checkpoint instead.

Launch (repo root):
    python src/04_train_teacher.py --config configs/tiny.yaml model=tiny_llama fold=0          # CPU / 1 GPU
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 \\
        src/04_train_teacher.py --config configs/a100x8.yaml model=llama3_70b fold=0          # 8 GPUs
(`sh run_pipeline.sh <fold>` runs this for every teacher of the profile.)

Training runs through arena_distill.engine (as stages 3, 7, 22): length-grouped micro-batches (padding
only to the longest row of each, the longest batch first), gradient accumulation to `global_batch` whatever
the number of processes (asserted at start, DeepSpeed's config included); AdamW, warmup + cosine, grad
clipping; fp32 trainable weights; a step line with elapsed time and ETA.
Resume: a complete checkpoint (trainable weights, optimizer, scheduler, RNG of every rank, loop
position) is written every `save_every` optimizer steps; re-running the same command continues from it
and reproduces the uninterrupted loss curve. Granularity: one optimizer step. A finished run (DONE.json)
is skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from arena_distill import config as C
from arena_distill import engine
from arena_distill.dist import is_main, print0
from arena_distill.io import (atomic_write_json, atomic_write_text, check_done, fingerprint, is_done, mark_done,
                              require, require_done, run_stage)
from arena_distill.metrics import cv_table, prior_log_loss
from arena_distill.models import add_lora, describe, init_lora_from_adapter, load_classifier, load_tokenizer, \
    model_folder, warn_if_cpu_quant
from arena_distill.train_utils import LoraArgs, TrainArgs, promote_files
from arena_distill.readers import read_parquet


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class TeacherConfig(LoraArgs, TrainArgs):
    model: str = C.field("", help="teacher name: a folder under model_dir (e.g. llama3_70b)")
    fold: int = C.field(0, help="fold to train (its rows are the validation side)")
    seed: int = C.field(2025, help="base seed (each rank uses seed + rank)")
    n_folds: int = C.field(5, help="number of folds (for the CV table)")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data (stage 2)")
    model_dir: str = C.field("model_path", help="base checkpoints")
    save_dir: str = C.field("model_save", help="where adapters go")
    teachers: list[str] = C.field([], help="all teachers of the profile (for the CV table)")
    student: str = C.field("", help="student name (for the CV table)")
    out_dir: str = C.field("", help="output folder; default <save_dir>/<model>fold<fold>")
    init_from_post_pretrain: bool = C.field(True, help="start LoRA from <save_dir>/<model>_ut when it exists")
    epochs: float = C.field(2.0, help="epochs the warmup + cosine schedule is planned for")
    epochs_run: float = C.field(-1.0, help="epochs actually trained (-1 = epochs); the seed plans 2 and breaks "
                                           "after 1 (train_ce_model_nice_memory.py: `break` at the epoch end)")
    logits_from: str = C.field("last", help="checkpoint kept as the result and scored by stage 5: last (the seed: "
                                            "epoch_0_model, the last step) or best (lowest valid log loss)")
    warmup_steps: int = C.field(100, help="linear warmup steps")
    eval_every: int = C.field(200, help="evaluate on the valid side every N optimizer steps (and at the end)")
    eval_batch: int = C.field(16, help="rows per evaluation batch")
    eval_max_tokens: int = C.field(0, help="token budget per evaluation batch (0 = rows only)")
    save_every: int = C.field(100, help="write a resume checkpoint every N optimizer steps")
    force: bool = C.field(False, help="retrain even if DONE.json exists")

    def __post_init__(self) -> None:
        if not self.model:
            raise C.ConfigError("model= is required (a folder name under model_dir)")
        if self.fold < 0 or self.fold >= self.n_folds:
            raise C.ConfigError(f"fold={self.fold} outside 0..{self.n_folds - 1}")
        if self.quant not in ("", "nf4", "int8"):
            raise C.ConfigError(f"quant must be '', nf4 or int8, got {self.quant!r}")
        if self.logits_from not in ("last", "best"):
            raise C.ConfigError(f"logits_from must be last or best, got {self.logits_from!r}")
        if self.epochs_run > self.epochs:
            raise C.ConfigError(f"epochs_run={self.epochs_run} is more than the scheduled epochs={self.epochs}")
        super().__post_init__()


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(TeacherConfig, "teacher", argv)
    data_dir = Path(cfg.processed_dir) / f"{cfg.model}fold{cfg.fold}"
    out = Path(cfg.out_dir or Path(cfg.save_dir) / f"{cfg.model}fold{cfg.fold}")
    fp = fingerprint(cfg, exclude=("eval_batch", "eval_max_tokens"))
    if check_done(out, fp, cfg.force, "teacher"):
        return {"skipped": True, "out": str(out)}
    if cfg.force and is_main() and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- init
    require_done(data_dir, "sh run_data.sh", what="processed fold data")
    base = model_folder(cfg.model_dir, cfg.model)
    accelerator, accum, seed = engine.setup(cfg, out, tag="teacher")
    print0(f"[teacher] model={cfg.model} fold={cfg.fold} epochs={cfg.epochs} epochs_run={cfg.epochs_run} "
           f"logits_from={cfg.logits_from}")

    # -------------------------------------------------------------------------------------------- data
    train = read_parquet(require(data_dir / "train.parquet", "sh run_data.sh"), fix="re-run: sh run_data.sh")
    dev = read_parquet(require(data_dir / "dev.parquet", "sh run_data.sh"), fix="re-run: sh run_data.sh")
    train_ids, train_labels = train["input_ids"].tolist(), train["label"].to_numpy(np.int64)
    dev_ids, dev_labels = dev["input_ids"].tolist(), dev["label"].to_numpy(np.int64)
    plan = engine.plan_steps(len(train), cfg, accum, where=f"{data_dir}/train.parquet",
                             epochs_run=cfg.epochs_run if cfg.epochs_run > 0 else None)
    print0(f"[teacher] train rows {len(train):,}  valid rows {len(dev):,}  steps/epoch {plan.steps_per_epoch}  "
           f"schedule steps {plan.total_steps}  training stops at step {plan.stop_step}")

    # ------------------------------------------------------------------------------------------- model
    tokenizer = load_tokenizer(base)
    model = load_classifier(base, dtype=cfg.dtype, quant=warn_if_cpu_quant(cfg.quant),
                            attn_implementation=cfg.attn_implementation or None, pad_token_id=tokenizer.pad_token_id)
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=cfg.target_modules, gradient_checkpointing=cfg.gradient_checkpointing)
    ut_dir = Path(cfg.save_dir) / f"{cfg.model}_ut"
    init_from = None
    if cfg.init_from_post_pretrain and is_done(ut_dir):
        n = init_lora_from_adapter(model, ut_dir, drop_head=True)
        init_from = str(ut_dir)
        print0(f"[teacher] LoRA initialised from post-pretrained adapter {ut_dir} ({n} tensors, head dropped)")
    print0(f"[teacher] {describe(model)}")
    model, optimizer, scheduler = engine.prepare(accelerator, model, cfg, plan, warmup_steps=cfg.warmup_steps)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, out, seed=seed, base_model=str(base), init_adapter=init_from)
    pad_id, device = tokenizer.pad_token_id, accelerator.device

    loss_fn = engine.classifier_ce_loss(model, train_ids, train_labels, pad_id, device)

    evaluate = engine.classifier_evaluation(accelerator, model, dev_ids, dev_labels, dev["id"].to_numpy(), pad_id,
                                            batch_size=cfg.eval_batch, max_tokens=cfg.eval_max_tokens or None)

    # -------------------------------------------------------------------------------------------- loop
    result = engine.train(accelerator, model, optimizer, scheduler, plan, lengths=[len(x) for x in train_ids],
                          loss_fn=loss_fn, part_names=["ce"], seed=cfg.seed, out=out, tag="teacher", cfg=cfg,
                          evaluate=evaluate, eval_every=cfg.eval_every, best_key="valid_log_loss",
                          save_every=cfg.save_every, tracker_config=dataclasses.asdict(cfg))
    if result.stopped:
        return {"stopped": True, "step": result.step, "out": str(out)}

    # ------------------------------------------------------------------------------------ save/summary
    summary = {}
    if is_main():
        kept = result.last if cfg.logits_from == "last" else result.best
        # The kept adapter (+ its oof.csv) is the stage's result at the top level; stage 5 scores it.
        promote_files(out / cfg.logits_from, out)
        rows = read_parquet(data_dir / "train.parquet", columns=["label"])["label"]
        summary = {"model": cfg.model, "fold": cfg.fold, "valid_log_loss": kept["valid_log_loss"],
                   "valid_accuracy": kept["valid_accuracy"], "kept": cfg.logits_from, "kept_step": kept["step"],
                   "best_step": result.best["step"], "best_valid_log_loss": result.best["valid_log_loss"],
                   "last_step": result.last["step"], "last_valid_log_loss": result.last["valid_log_loss"],
                   "n_valid": len(dev), "n_train": len(train), "prior_log_loss": prior_log_loss(rows, dev_labels),
                   "total_steps": plan.total_steps, "stop_step": plan.stop_step,
                   "train_seconds_this_run": round(result.seconds, 1),
                   "base_model": str(base), "init_adapter": init_from}
        atomic_write_json(out / "metrics.json", summary)
        mark_done(out, fingerprint=fp, stage="teacher", **{k: summary[k] for k in ("valid_log_loss", "best_step")})
        names = [*cfg.teachers, *([cfg.student] if cfg.student else [])] or [cfg.model]
        atomic_write_text(Path(cfg.save_dir) / "cv_table.md", cv_table(cfg.save_dir, names, cfg.n_folds))
        print0(f"[teacher] done: valid log loss {summary['valid_log_loss']:.4f} ({cfg.logits_from} checkpoint, "
               f"step {kept['step']}; prior {summary['prior_log_loss']:.4f}), accuracy "
               f"{summary['valid_accuracy']:.3f}, best step {summary['best_step']} -> {out}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    run_stage(main)
