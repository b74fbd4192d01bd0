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

Training runs through arena_distill.engine (as stages 4, 7, 22). Resume: checkpoint every `save_every`
optimizer steps; re-running the same command after a kill -9 gives the uninterrupted loss curve and adapter.
Done runs are skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from arena_distill import config as C
from arena_distill import engine
from arena_distill.dist import is_main, print0
from arena_distill.io import (atomic_write_json, check_done, fingerprint, mark_done, require, require_done,
                              run_stage)
from arena_distill.models import add_lora, describe, load_classifier, load_tokenizer, model_folder, warn_if_cpu_quant
from arena_distill.train_utils import LoraArgs, TrainArgs, promote_files, read_log
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
        super().__post_init__()


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
    accelerator, accum, seed = engine.setup(cfg, out, tag="post_pretrain")
    print0(f"[post_pretrain] model={cfg.model}")

    # -------------------------------------------------------------------------------------------- data
    train = read_parquet(require(data_dir / "train.parquet", "sh run_data.sh"), fix="re-run: sh run_data.sh")
    train_ids, train_labels = train["input_ids"].tolist(), train["label"].to_numpy(np.int64)
    plan = engine.plan_steps(len(train), cfg, accum, where=f"{data_dir}/train.parquet")
    print0(f"[post_pretrain] train rows {len(train):,}  steps/epoch {plan.steps_per_epoch}  "
           f"total steps {plan.total_steps}")

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
    model, optimizer, scheduler = engine.prepare(accelerator, model, cfg, plan, warmup_steps=cfg.warmup_steps)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, out, seed=seed, base_model=str(base))
    pad_id, device = tokenizer.pad_token_id, accelerator.device

    loss_fn = engine.classifier_ce_loss(model, train_ids, train_labels, pad_id, device)

    # -------------------------------------------------------------------------------------------- loop
    result = engine.train(accelerator, model, optimizer, scheduler, plan, lengths=[len(x) for x in train_ids],
                          loss_fn=loss_fn, part_names=["ce"], seed=cfg.seed, out=out, tag="post_pretrain",
                          cfg=cfg, save_every=cfg.save_every, tracker_config=dataclasses.asdict(cfg))
    if result.stopped:
        return {"stopped": True, "step": result.step, "out": str(out)}

    # ------------------------------------------------------------------------------------ save/summary
    summary = {}
    if is_main():
        promote_files(out / "last", out, remove=True)  # the adapter is the stage's result, at the top level
        final_ce = read_log(out / "log.jsonl")[-1]["ce"]
        summary = {"model": cfg.model, "n_train": len(train), "total_steps": plan.total_steps,
                   "final_ce": final_ce, "train_seconds_this_run": round(result.seconds, 1),
                   "base_model": str(base)}
        atomic_write_json(out / "metrics.json", summary)
        mark_done(out, fingerprint=fp, stage="post_pretrain", final_ce=summary["final_ce"])
        print0(f"[post_pretrain] done: {plan.total_steps} steps, last ce {summary['final_ce']:.4f} -> {out}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    run_stage(main)
