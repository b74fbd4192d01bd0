"""Stage 0: write deterministic LMSYS-format sample data (only used when the real Kaggle files are absent).

Launch (from the repository root; one process, CPU, a few seconds):

    python src/00_make_sample_data.py --config configs/tiny.yaml
    python src/00_make_sample_data.py --config configs/tiny.yaml n_train=5000 force=true

`run_data.sh` runs it only when `$DATA_DIR/train.csv` is missing (or with SAMPLE=1).

Reads: nothing (config section `sample`, plus `seed` and `data_dir` from `common`).

Writes, in `data_dir` (default `data/lmsys-chatbot-arena/`), each file atomically:
    train.csv, test.csv, sample_submission.csv   exact Kaggle schema (JSON-encoded turn lists)
    extra_33k.csv, extra_ut.csv                  same columns as train.csv (the extra-data paths)
    truth.csv                                    id, split, p_a, p_b, p_tie, label: the true class
                                                 probabilities each label was drawn from
    sample_report.json                           sizes, quirk counts, best achievable vs class-prior
                                                 log loss, bias statistics
    config.yaml, DONE.json                       resolved config; completion marker (last)

Skips when DONE.json exists (unless force=true). Never overwrites a `train.csv` that it did not
write (real Kaggle data): that is an error, even with force=true.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arena_distill.config import field, load_config, save_config  # noqa: E402
from arena_distill.dist import print0, seed_everything  # noqa: E402
from arena_distill.io import (DONE, atomic_write_csv, atomic_write_json, is_done, mark_done, read_done, run_stage,  # noqa: E402
                              StageInputError)
from arena_distill.sample_data import make_sample  # noqa: E402

GENERATOR = "arena_distill.sample_data"


# --------------------------------------------------------------------------------------------------
# Config

@dataclass
class SampleConfig:
    data_dir: str = field("data/lmsys-chatbot-arena", help="where the sample files are written (common)")
    seed: int = field(2025, help="generator seed (common); the same seed gives byte-identical files")
    n_train: int = field(3000, help="train.csv rows (including a few exact duplicate rows)")
    n_test: int = field(300, help="test.csv rows")
    n_33k: int = field(600, help="extra_33k.csv rows (stands in for the deduplicated 33k arena set)")
    n_ut: int = field(600, help="extra_ut.csv rows (stands in for the UltraFeedback-derived UT set)")
    quirk_scale: float = field(1.0, help="multiplies every quirk probability (0 = clean rows only)")
    force: bool = field(False, help="regenerate even when DONE.json exists")

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "n_33k", "n_ut"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_train < 50:
            raise ValueError(f"n_train must be >= 50 for stratified folds to have every class, got {self.n_train}")
        if self.quirk_scale < 0:
            raise ValueError(f"quirk_scale must be >= 0, got {self.quirk_scale}")


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(SampleConfig, "sample", argv)
    out = Path(cfg.data_dir)

    # ----------------------------------------------------------------------------------------------
    # Skip / refuse

    ours = is_done(out) and read_done(out).get("generator") == GENERATOR
    if (out / "train.csv").exists() and not ours:
        raise StageInputError(f"{out / 'train.csv'} exists and was not written by the sample generator "
                              f"(real Kaggle data?); refusing to overwrite it. Use another data_dir=... "
                              f"or move the file away.")
    if ours and not cfg.force:
        print0(f"sample data already in {out} (DONE.json); force=true to regenerate")
        return 0
    seed_everything(cfg.seed, offset_by_rank=False)

    # ----------------------------------------------------------------------------------------------
    # Generate

    t0 = time.perf_counter()
    files, report = make_sample(n_train=cfg.n_train, n_test=cfg.n_test, n_33k=cfg.n_33k, n_ut=cfg.n_ut,
                                seed=cfg.seed, quirk_scale=cfg.quirk_scale)
    report["generate_seconds"] = round(time.perf_counter() - t0, 2)

    # ----------------------------------------------------------------------------------------------
    # Write: DONE.json is removed first and written last, so a killed run never looks finished.

    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)
    for name, df in files.items():
        atomic_write_csv(out / f"{name}.csv", df)
    atomic_write_json(out / "sample_report.json", report)
    save_config(cfg, out)
    mark_done(out, generator=GENERATOR, seed=cfg.seed, files=sorted(f"{k}.csv" for k in files))

    tr = report["train"]
    print0(json.dumps({k: report[k] for k in ("sizes", "train", "test")}, indent=2))
    print0(f"sample data written to {out} in {report['generate_seconds']} s: best achievable log loss "
           f"{tr['best_log_loss']:.4f} (true probabilities) vs class prior {tr['prior_log_loss']:.4f} on train; "
           f"longer answer wins {tr['longer_wins_decisive']:.1%} of decisive rows")
    return 0


if __name__ == "__main__":
    run_stage(main)
