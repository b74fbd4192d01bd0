"""Stage 6: attach every teacher's logits to the student's training rows of one fold.

Reads   data/processed_data/<student>fold<k>/train.parquet (stage 2), data/oof/<teacher>fold<k>.parquet
        (stage 5) for each teacher of the profile
Writes  data/processed_data/<student>fold<k>/train.parquet with one column logits_<teacher>
        (list<float32>[3]) per teacher (rewritten atomically), and merge_logits.json (inputs' sizes and
        mtimes, row counts). Rows are matched on (source, id, swap): each student row must get exactly
        one finite logit triple from each teacher, otherwise nothing is written and the error names the
        file, the count and examples.

Launch (repo root):
    python src/06_merge_logits.py --config configs/tiny.yaml fold=0
Skipped when merge_logits.json records the same input files (size + mtime) unless force=true, so a
teacher that was retrained (new logits file) is merged again.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from arena_distill import config as C
from arena_distill.dist import print0
from arena_distill.io import (atomic_write_json, atomic_write_parquet, require, require_done, run_stage,
                              StageInputError)
from arena_distill.readers import read_json, read_parquet

KEYS = ["source", "id", "swap"]


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class MergeLogitsConfig:
    fold: int = C.field(0, help="fold to merge")
    student: str = C.field("", help="student name (its processed fold data gets the columns)")
    teachers: list[str] = C.field([], help="teachers whose logits are attached, in loss order")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data (stage 2)")
    logits_dir: str = C.field("data/oof", help="teacher logits (stage 5)")
    force: bool = C.field(False, help="merge even if the recorded inputs are unchanged")

    def __post_init__(self) -> None:
        if not self.student or not self.teachers:
            raise C.ConfigError("student= and teachers= are required")


def _signature(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(MergeLogitsConfig, "merge_logits", argv)
    data_dir = require_done(Path(cfg.processed_dir) / f"{cfg.student}fold{cfg.fold}", "sh run_data.sh",
                            what="student fold data")
    train_file = data_dir / "train.parquet"
    record_file = data_dir / "merge_logits.json"
    sources = {t: require(Path(cfg.logits_dir) / f"{t}fold{cfg.fold}.parquet",
                          f"python src/05_teacher_logits.py model={t} fold={cfg.fold}  (or sh run_pipeline.sh {cfg.fold})",
                          what=f"logits of teacher {t}") for t in cfg.teachers}
    signatures = [_signature(p) for p in sources.values()]
    if record_file.is_file() and not cfg.force:
        if read_json(record_file).get("inputs") == signatures:
            print0(f"[merge_logits] {train_file} already has these teachers' logits; skipping (force=true to redo)")
            return {"skipped": True}

    # ------------------------------------------------------------------------------------------- merge
    train = read_parquet(train_file, fix="re-run: sh run_data.sh")
    train = train.drop(columns=[c for c in train.columns if c.startswith("logits_")])
    for teacher, path in sources.items():
        table = read_parquet(path, fix=f"re-run: python src/05_teacher_logits.py model={teacher} fold={cfg.fold}")
        missing_cols = [c for c in (*KEYS, "logit_0", "logit_1", "logit_2") if c not in table.columns]
        if missing_cols:
            raise StageInputError(f"{path}: missing columns {missing_cols}")
        values = table[["logit_0", "logit_1", "logit_2"]].to_numpy(np.float32)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise StageInputError(f"{path}: {int(bad.sum())} rows have NaN/inf logits (e.g. "
                                  f"{table.loc[bad, KEYS].head(3).to_dict('records')}); re-run stage 5 with force=true")
        if table.duplicated(KEYS).any():
            raise StageInputError(f"{path}: {int(table.duplicated(KEYS).sum())} duplicate (source, id, swap) rows")
        table = table[KEYS].assign(**{f"logits_{teacher}": list(values)})
        merged = train.merge(table, on=KEYS, how="left", validate="one_to_one")
        lost = merged[f"logits_{teacher}"].isna()
        if lost.any():
            raise StageInputError(f"{path}: no logits for {int(lost.sum())} of {len(train)} student rows (e.g. "
                                  f"{merged.loc[lost, KEYS].head(3).to_dict('records')}): teacher and student data "
                                  f"come from different runs of stage 2; re-run stage 5 for {teacher} fold {cfg.fold}")
        extra = len(table) - len(train)
        if extra:
            print0(f"[merge_logits] note: {path} has {extra} rows the student does not train on (ignored)")
        train = merged

    # -------------------------------------------------------------------------------------------- save
    atomic_write_parquet(train_file, train)
    record = {"fold": cfg.fold, "teachers": cfg.teachers, "rows": len(train), "inputs": signatures}
    atomic_write_json(record_file, record)
    print0(f"[merge_logits] {train_file}: {len(train):,} rows, columns " +
           ", ".join(f"logits_{t}" for t in cfg.teachers))
    return record


if __name__ == "__main__":
    run_stage(main)
