"""Stage 5: raw 3-class logits of one teacher for every row the student trains on in one fold.

Modes
  in_sample (default, the seed): the fold-k teacher scores fold k's training rows, i.e. rows it was
            trained on (soft labels are in-sample, so the student's CV is optimistic).
  oof:      each training row gets the logits of the teacher that did NOT see it: a row of fold j is
            scored by teacher fold j (needs every other fold's teacher). Extra-data rows (33k, UT) are
            in every fold's training side, so no teacher is out-of-fold for them: they are scored by
            the fold-k teacher and counted as in-sample in the report.

Reads   data/processed_data/<teacher>fold<k>/train.parquet (stage 2), model_save/<teacher>fold<j>/ (stage 4),
        data/folds.csv (oof mode)
Writes  data/oof/<teacher>fold<k>.parquet  columns: source, id, swap, logit_0, logit_1, logit_2,
        scored_by_fold; plus <teacher>fold<k>.json (report) and <teacher>fold<k>.config.yaml.
        Written atomically after checks: every row exactly once, all logits finite.

Launch (repo root):
    python src/05_teacher_logits.py --config configs/tiny.yaml model=tiny_llama fold=0
    accelerate launch --num_processes 8 src/05_teacher_logits.py --config configs/a100x8.yaml \\
        model=llama3_70b fold=0 quant=nf4          # 8 processes, rows split across them
    python src/05_teacher_logits.py --config configs/a100x8.yaml model=llama3_70b fold=0 device_map=auto
                                                   # or: one process, the 70B spread over all GPUs
Re-running skips an existing output unless force=true.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from arena_distill import config as C
from arena_distill.dist import is_main, pick_device, print0, rank, world_size
from arena_distill.io import (atomic_write_json, atomic_write_parquet, check_settings, fingerprint, require,
                              require_done, run_stage, StageInputError)
from arena_distill.metrics import classification_metrics
from arena_distill.models import load_classifier, load_peft, load_tokenizer, model_folder, warn_if_cpu_quant
from arena_distill.scoring import score_classifier
from arena_distill.readers import read_csv, read_json, read_parquet


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class LogitsConfig:
    model: str = C.field("", help="teacher name (folder under model_dir)")
    fold: int = C.field(0, help="fold whose training rows are scored")
    mode: str = C.field("in_sample", help="in_sample (seed) or oof (true out-of-fold soft labels)")
    n_folds: int = C.field(5, help="number of folds")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data (stage 2)")
    model_dir: str = C.field("model_path", help="base checkpoints")
    save_dir: str = C.field("model_save", help="trained adapters (stage 4)")
    folds_csv: str = C.field("data/folds.csv", help="fold assignment (stage 2), used in oof mode")
    out_dir: str = C.field("data/oof", help="where <teacher>fold<k>.parquet goes")
    batch_size: int = C.field(16, help="rows per forward pass")
    max_tokens: int = C.field(0, help="padded-token budget per batch (0 = rows only)")
    dtype: str = C.field("auto", help="auto (bf16 GPU / fp32 CPU), fp32, bf16, fp16")
    quant: str = C.field("", help="'nf4' to load the base 4-bit as in QLoRA training")
    device_map: str = C.field("", help="'' = one device per process; 'auto' = spread one model over all GPUs")
    attn_implementation: str = C.field("", help="'' = default; 'eager' for Gemma2")
    force: bool = C.field(False, help="recompute even if the output exists")

    def __post_init__(self) -> None:
        if not self.model:
            raise C.ConfigError("model= is required")
        if self.mode not in ("in_sample", "oof"):
            raise C.ConfigError(f"mode must be in_sample or oof, got {self.mode!r}")


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(LogitsConfig, "logits", argv)
    out_file = Path(cfg.out_dir) / f"{cfg.model}fold{cfg.fold}.parquet"
    report_file = Path(cfg.out_dir) / f"{cfg.model}fold{cfg.fold}.json"
    fp = fingerprint(cfg, exclude=("batch_size", "max_tokens"))  # batching does not change the logits
    if out_file.is_file() and not cfg.force:
        old = read_json(report_file, fix="re-run with force=true") if report_file.is_file() else {}
        check_settings(out_file, old.get("fingerprint"), fp, "logits")
        return {"skipped": True, "out": str(out_file)}

    # -------------------------------------------------------------------------------------------- data
    data_dir = require_done(Path(cfg.processed_dir) / f"{cfg.model}fold{cfg.fold}", "sh run_data.sh",
                            what="processed fold data")
    rows = read_parquet(data_dir / "train.parquet", columns=["source", "id", "swap", "input_ids", "label"])
    scorer = np.full(len(rows), cfg.fold, dtype=np.int64)
    if cfg.mode == "oof":
        folds = read_csv(require(cfg.folds_csv, "sh run_data.sh"), fix="re-run: sh run_data.sh")
        fold_of = dict(zip(folds["id"].to_numpy(), folds["fold"].to_numpy()))
        is_train = (rows["source"] == "train").to_numpy()
        scorer[is_train] = rows.loc[is_train, "id"].map(fold_of).to_numpy()
        if (scorer[is_train] == cfg.fold).any():
            raise StageInputError(f"{data_dir}/train.parquet contains rows of fold {cfg.fold} itself: the "
                                  f"processed data and {cfg.folds_csv} disagree; re-run sh run_data.sh with FORCE=1")
    needed = sorted(set(scorer.tolist()))
    adapters = {j: require_done(Path(cfg.save_dir) / f"{cfg.model}fold{j}",
                                f"python src/04_train_teacher.py model={cfg.model} fold={j}  (or sh run_pipeline.sh {j})",
                                what=f"teacher adapter fold {j}") for j in needed}
    print0(f"[logits] teacher={cfg.model} fold={cfg.fold} mode={cfg.mode} rows={len(rows):,} "
           f"scored by folds {needed} processes={world_size()}")

    # ------------------------------------------------------------------------------------------- score
    base = model_folder(cfg.model_dir, cfg.model)
    tokenizer = load_tokenizer(base)
    # k-bit and device_map=auto models are placed at load time; otherwise this process's device.
    device = None if (cfg.device_map or cfg.quant) else pick_device()
    logits = np.full((len(rows), 3), np.nan, dtype=np.float32)
    sequences = rows["input_ids"].tolist()
    for j in needed:
        model = load_classifier(base, dtype=cfg.dtype, quant=warn_if_cpu_quant(cfg.quant),
                                attn_implementation=cfg.attn_implementation or None,
                                device_map=cfg.device_map or None, pad_token_id=tokenizer.pad_token_id)
        model = load_peft(model, adapters[j])
        if device is not None:
            model.to(device)
        sel = np.flatnonzero(scorer == j)
        idx, part, _ = score_classifier(model, [sequences[i] for i in sel], tokenizer.pad_token_id,
                                     batch_size=cfg.batch_size, max_tokens=cfg.max_tokens or None,
                                     desc=f"teacher fold {j}", shard=(rank(), world_size()))
        if world_size() > 1:
            from accelerate import PartialState
            from accelerate.utils import gather_object

            PartialState()
            pieces = gather_object([(idx, part)])
            idx = np.concatenate([p[0] for p in pieces])
            part = np.concatenate([p[1] for p in pieces])
        logits[sel[idx]] = part
        del model

    # -------------------------------------------------------------------------------------- check/save
    if not is_main():
        return {}
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        first = rows.loc[bad, ["source", "id", "swap"]].head(3).to_dict("records")
        raise StageInputError(f"{int(bad.sum())} rows got non-finite logits (e.g. {first}); nothing written")
    keys = rows[["source", "id", "swap"]]
    if keys.duplicated().any():
        raise StageInputError(f"{data_dir}/train.parquet has duplicate (source, id, swap) keys; re-run run_data.sh")
    table = keys.assign(logit_0=logits[:, 0], logit_1=logits[:, 1], logit_2=logits[:, 2], scored_by_fold=scorer)
    report = {"teacher": cfg.model, "fold": cfg.fold, "mode": cfg.mode, "rows": len(table),
              "in_sample_rows": int((scorer == cfg.fold).sum()),
              "out_of_fold_rows": int((scorer != cfg.fold).sum()),
              "fit_on_scored_rows": classification_metrics(logits, rows["label"].to_numpy())}
    C.save_config(cfg, cfg.out_dir, name=f"{cfg.model}fold{cfg.fold}.config.yaml")
    atomic_write_json(report_file, {**report, "fingerprint": fp})
    atomic_write_parquet(out_file, table)
    print0(f"[logits] wrote {out_file}: {len(table):,} rows ({report['in_sample_rows']:,} in-sample, "
           f"{report['out_of_fold_rows']:,} out-of-fold); log loss on them "
           f"{report['fit_on_scored_rows']['log_loss']:.4f}")
    return report


if __name__ == "__main__":
    run_stage(main)
