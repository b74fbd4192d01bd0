"""Score your own response pairs with a trained judge: one row in, one row of three probabilities out.

Launch (repository root; one process, the GPU when there is one, else the CPU):

    python src/score_pairs.py input=pairs.jsonl output=scores.jsonl model=model_save/final_model_gptq
    python src/score_pairs.py input=arena.parquet output=scores.csv model=model_save/final_merged tta=false
    python src/score_pairs.py input=battles.jsonl output=s.jsonl model=model_save/Gemma2_9b_avg \
        base_model=model_path/Gemma2_9b column_map='{question: prompt, answer1: response_a, answer2: response_b}'

Reads   input: any format ``arena_distill.importers`` reads (``format=auto`` by default): the Kaggle CSV, Arena
        battles (``chatbot_arena_conversations``, ``arena-human-preference-55k/100k/140k``; JSONL or parquet),
        plain pairs (``prompt, response_a, response_b``: strings or message lists), or ``prompt, chosen,
        rejected`` (scored as A = chosen, B = rejected). Labels are not needed and not used.
        model: a folder written by the pipeline (GPTQ, merged, or adapter + base); its encoding record says how
        rows are encoded (``arena_distill.judge``).
Writes  output (``.jsonl``: ``{"id", "row", "winner_model_a", "winner_model_b", "winner_tie"}`` a line; ``.csv``:
        the same columns): every input row exactly once, in input order, ``id`` as the input gave it (the row
        number when it has none), ``row`` counting input rows from 1. Checked before it is renamed into place:
        one row per input row, finite probabilities in [0, 1] summing to 1. A progress bar shows scoring.

Not a cached stage: every run scores afresh. Options: ``python src/score_pairs.py --help``.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from arena_distill import config as C  # noqa: E402
from arena_distill.dist import print0  # noqa: E402
from arena_distill.importers import read_preferences  # noqa: E402
from arena_distill.io import StageInputError, atomic_path, run_stage  # noqa: E402

PROB_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
SUM_TOL = 1e-6


@dataclasses.dataclass
class ScoreConfig:
    input: str = C.field("", help="pairs to score (.jsonl, .json, .parquet or .csv)")
    output: str = C.field("", help="scores file (.jsonl or .csv)")
    model: str = C.field("", help="model folder: GPTQ, merged, or a PEFT adapter")
    base_model: str = C.field("", help="base checkpoint of an adapter; empty = from the adapter's config")
    format: Literal["auto", "kaggle", "arena_conversations", "arena_55k", "pairs"] = C.field(
        "auto", help="input format (auto = from the columns)")
    column_map: dict = C.field({}, help="rename input columns, e.g. {question: prompt, answer1: response_a}")
    tta: bool = C.field(True, help="also score A/B swapped and average (mapped back)")
    max_length: int = C.field(0, help="tokens per row; 0 = the training length from the encoding record")
    batch_size: int = C.field(8, help="rows per batch at most")
    max_tokens: int = C.field(0, help="padded tokens per batch at most; 0 = no limit")
    dtype: str = C.field("auto", help="auto = bf16 / fp16 (T4) / fp32 (CPU); or fp32, bf16, fp16")
    device: str = C.field("", help="'' = cuda when available, else cpu; or e.g. cpu, cuda:1")
    encoding: str = C.field("utf-8-sig", help="text encoding of a CSV input")

    def __post_init__(self) -> None:
        for key in ("input", "output", "model"):
            if not getattr(self, key):
                raise ValueError(f"{key}= is required (python src/score_pairs.py input=pairs.jsonl "
                                 f"output=scores.jsonl model=<folder>)")
        if not self.output.lower().endswith((".jsonl", ".csv")):
            raise ValueError(f"output must end in .jsonl or .csv, got {self.output!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def load(argv: list[str] | None) -> ScoreConfig:
    """key=value options; a profile only when ``--config`` is given (this tool needs none)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path, overrides, want_help = C.parse_overrides(argv)
        if want_help:
            print(C.help_text(ScoreConfig, "score"))
            raise SystemExit(0)
        profile = C.read_profile(path) if path else {}
        return C.build_config(ScoreConfig, "score", profile, overrides, source=str(path or "command line"))
    except C.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def output_id(source_id: str):
    """The input's id as it was: an integer stays an integer, anything else a string."""
    try:
        as_int = int(source_id)
        return as_int if str(as_int) == source_id else source_id
    except ValueError:
        return source_id


def validate_scores(frame: pd.DataFrame, n_rows: int, where: str) -> None:
    """Every input row once (rows 1..n in order), probabilities finite, in [0, 1], summing to 1."""
    problems = []
    if len(frame) != n_rows:
        problems.append(f"{len(frame)} rows for {n_rows} input rows")
    elif not np.array_equal(frame["row"].to_numpy(), np.arange(1, n_rows + 1)):
        problems.append("rows are not each input row once, in order")
    probs = frame[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        problems.append("probabilities not finite or outside [0, 1]")
    elif n_rows and np.abs(probs.sum(axis=1) - 1).max() > SUM_TOL:
        problems.append(f"row sums off by up to {np.abs(probs.sum(axis=1) - 1).max():.2e}")
    if problems:
        raise RuntimeError(f"{where}: scores not written: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> dict:
    cfg = load(argv)
    t0 = time.perf_counter()
    src = Path(cfg.input)
    if not src.is_file():
        raise StageInputError(f"input {src}: file not found")

    # ------------------------------------------------------------------------------------- read
    rows, report = read_preferences(src, format=cfg.format, need_labels=False, column_map=cfg.column_map,
                                    encoding=cfg.encoding)
    print0(f"[score] {src}: {report.rows_in} rows ({report.format}); repairs {report.repairs or 'none'}")

    # ------------------------------------------------------------------------------------- score
    from arena_distill.judge import Judge

    judge = Judge(cfg.model, base_model=cfg.base_model, device=cfg.device or None, dtype=cfg.dtype,
                  batch_size=cfg.batch_size, max_tokens=cfg.max_tokens or None, max_length=cfg.max_length or None)
    print0(f"[score] model {cfg.model} ({judge.kind}) on {judge.device} | encoding {judge.encode_kwargs} | "
           f"tta {cfg.tta}")
    probs = judge.predict(rows["prompt"].tolist(), rows["response_a"].tolist(), rows["response_b"].tolist(),
                          tta=cfg.tta)

    # ------------------------------------------------------------------------------------- write (checked)
    frame = pd.DataFrame({"id": [output_id(s) for s in rows["source_id"]], "row": np.arange(1, len(rows) + 1)})
    for j, col in enumerate(PROB_COLUMNS):
        frame[col] = probs[:, j]
    validate_scores(frame, report.rows_in, str(src))
    out = Path(cfg.output)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False, float_format="%.8f")
            written = pd.read_csv(tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in frame.to_dict("records"):
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            written = pd.read_json(tmp, lines=True, dtype=False)
        validate_scores(written, report.rows_in, str(out))  # what the reader of the file will get
    summary = {"input": str(src), "output": str(out), "rows": report.rows_in, "format": report.format,
               "model": cfg.model, "kind": judge.kind, "tta": cfg.tta, "seconds": round(time.perf_counter() - t0, 2),
               "scoring": judge.last_stats}
    print0(f"[score] wrote {out}: {report.rows_in} rows in {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    run_stage(main)
