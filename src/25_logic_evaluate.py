"""Stage 25: score a generations file against the labelled problems; write the competition answer file.

Reads   a generations JSONL (stage 20 format: one line per attempt, {"id", "qid", "attempt", "output", ...})
        the problems it answers: by default read back from the stage-20 run's config.yaml (file + range)
Writes  <out_dir>/metrics.json   {"n_questions", "n_answered", "n_correct", "accuracy", ..., "per_problem": [...]}
        <out_dir>/answer.jsonl   competition format: the problem lines with each question's "answer" set to the
                                 extracted letter, absent where none was extracted (gold answers never copied)
        <out_dir>/{config.yaml, DONE.json}, and <logic_dir>/eval_table.md (every evaluated run, one row each)
Prints  as its last line one JSON object {"n_questions", "n_answered", "n_correct", "accuracy"}.

Scoring is exact and conservative: the answer is always re-extracted from "output" (the stored "pred" is
ignored); accuracy = correct / all questions of the data, so a question with no generation, or with no
extractable answer, counts as wrong. With several attempts per question, attempt 0 is scored
(`attempt=`); `vote=majority` takes the most frequent extracted letter over all attempts instead (ties:
the letter reached first). Generations for questions not in the data are counted and ignored; duplicate
(id, qid, attempt) lines are an error. `valid=all` accepts any letter A-G, as the seed's extract() did;
the default accepts only the question's own option letters.

Launch (repo root):
    python src/25_logic_evaluate.py --config configs/tiny.yaml run=eval_fp
    # any generations file against any labelled file (e.g. recorded outputs converted to this format):
    python src/25_logic_evaluate.py generations=path/to/generations.jsonl \\
        data_file=data/tianchi_logic/round1_train_data.jsonl out_dir=data/logic/recorded_eval

Idempotent: a finished evaluation (DONE.json) is not recomputed unless force=true; its metrics line is printed.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from arena_distill import config as C
from arena_distill.io import (atomic_write_json, atomic_write_jsonl, atomic_write_text, check_done, fingerprint,
                              mark_done, require, require_done, run_stage, StageInputError)
from arena_distill.logic_text import LogicDataError, answer_file_rows, choose_predictions, read_generations, \
    read_logic_data, score, select_problems
from arena_distill.readers import read_json

HEADLINE = ("n_questions", "n_answered", "n_correct", "accuracy")


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class EvaluateConfig:
    logic_dir: str = C.field("data/logic", help="where generation runs live")
    run: str = C.field("", help="stage-20 run name under logic_dir (its generations.jsonl and config.yaml)")
    generations: str = C.field("", help="explicit generations JSONL (instead of run=)")
    data_file: str = C.field("", help="problems JSONL; default: the run's data file")
    problems: str = C.field("", help="problem range 'start:stop' of data_file; default: the run's range "
                                     "(with an explicit data_file: '' = all)")
    vote: str = C.field("attempt", help="attempt = score one attempt (see attempt=); majority = majority vote")
    attempt: int = C.field(0, help="which attempt is scored when vote=attempt")
    valid: str = C.field("options", help="options = only the question's own letters count; all = any A-G (seed)")
    on_bad_line: str = C.field("raise", help="raise | skip (counted) for malformed data lines")
    out_dir: str = C.field("", help="default: <run folder>/eval (eval_majority for vote=majority), or next to "
                                    "the generations file")
    force: bool = C.field(False, help="recompute even if DONE.json exists")

    def __post_init__(self) -> None:
        if bool(self.run) == bool(self.generations):
            raise C.ConfigError("give exactly one of run=<stage-20 run name> or generations=<path>")
        if self.vote not in ("attempt", "majority"):
            raise C.ConfigError(f"vote must be attempt or majority, got {self.vote!r}")
        if self.valid not in ("options", "all"):
            raise C.ConfigError(f"valid must be options or all, got {self.valid!r}")


def eval_table(logic_dir: Path) -> str:
    lines = ["| run | eval | questions | answered | correct | accuracy |", "|---|---|---|---|---|---|"]
    for m in sorted(logic_dir.glob("*/eval*/metrics.json")):
        d = read_json(m)
        acc = "-" if d["accuracy"] is None else f"{d['accuracy']:.4f}"
        lines.append(f"| {m.parent.parent.name} | {m.parent.name} | {d['n_questions']} | {d['n_answered']} | "
                     f"{d['n_correct'] if d['n_correct'] is not None else '-'} | {acc} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(EvaluateConfig, "logic_evaluate", argv)
    suffix = "eval" if cfg.vote == "attempt" and cfg.attempt == 0 else (
        "eval_majority" if cfg.vote == "majority" else f"eval_attempt{cfg.attempt}")
    if cfg.run:
        run = Path(cfg.logic_dir) / cfg.run
        gen_path = run / "generations.jsonl"
        out = Path(cfg.out_dir or run / suffix)
    else:
        run = None
        gen_path = Path(cfg.generations)
        out = Path(cfg.out_dir or gen_path.parent / suffix)
    fp = fingerprint(cfg)
    if check_done(out, fp, cfg.force, "logic_evaluate", to_stderr=True):
        metrics = read_json(out / "metrics.json", fix="re-run with force=true")
        print(json.dumps({k: metrics[k] for k in HEADLINE}), flush=True)
        return metrics
    if cfg.force and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- data
    data_file, problem_range = cfg.data_file, cfg.problems
    if run is not None:
        require_done(run, f"python src/20_logic_answer.py run_name={cfg.run}", what="generation run")
        saved = C.read_saved_config(run / "config.yaml")
        data_file = data_file or saved["data_file"]
        problem_range = problem_range if cfg.data_file else saved["problems"]
    else:
        require(gen_path, "python src/20_logic_answer.py", what="generations file")
        if not data_file:
            raise StageInputError("generations= needs data_file= (the problems the generations answer)")
    data = select_problems(read_logic_data(data_file, on_error=cfg.on_bad_line), problem_range)  # type: ignore[arg-type]
    gens = read_generations(gen_path)

    # --------------------------------------------------------------------------------------------- score
    preds, info = choose_predictions(data.problems, gens, vote=cfg.vote, attempt=cfg.attempt,  # type: ignore[arg-type]
                                     valid=cfg.valid)  # type: ignore[arg-type]
    metrics = score(data.problems, preds)
    headline = {k: metrics[k] for k in HEADLINE}
    full = {**headline, "vote": cfg.vote, "attempt": cfg.attempt if cfg.vote == "attempt" else None,
            "valid": cfg.valid, "generations": str(gen_path), "data_file": data_file, "problems": problem_range,
            **info, "data_report": data.report(), "per_problem": metrics["per_problem"]}
    if info["n_unmatched_generations"]:
        print(f"[logic_evaluate] warning: {info['n_unmatched_generations']} generations match no question of "
              f"{data_file}[{problem_range}] (ignored)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", full)
    atomic_write_jsonl(out / "answer.jsonl", answer_file_rows(data.problems, preds))
    C.save_config(cfg, out, data_file=data_file, problems=problem_range)
    mark_done(out, fingerprint=fp, stage="logic_evaluate", **headline)
    atomic_write_text(Path(cfg.logic_dir) / "eval_table.md", eval_table(Path(cfg.logic_dir)))
    print(f"[logic_evaluate] {gen_path}: {headline['n_correct']}/{headline['n_questions']} correct, "
          f"{headline['n_answered']} answered -> {out}", file=sys.stderr)
    print(json.dumps(headline), flush=True)
    return full


if __name__ == "__main__":
    run_stage(main, LogicDataError, FileNotFoundError)
