"""Stage 21: self-reflection - re-ask the questions the model got wrong until it is right, build SFT data.

Reads   data/logic/<answers_run>/generations.jsonl + config.yaml   (stage 20 on split=train)
Writes  data/logic/<out_name>/
            tries/try_<t>.jsonl   every re-ask of try t (generations format, attempt = t)
            traces.jsonl          the correct traces kept, with "origin": first_pass | recovered | gold_template
            sft.json              alpaca-style list [{"instruction", "input", "output"}] for stage 22
            report.json           first-pass accuracy, recovered (per try), never recovered, SFT row counts
            config.yaml, DONE.json

The seed's recipe: the first answer (attempt 0 of stage 20) is scored; each wrong question (wrong letter or
no extractable answer) is re-asked with sampling, up to `max_tries` times, until the extracted letter equals
the gold one; the correct trace of a recovered question becomes an SFT row (instruction = the exact prompt,
output = the model's own reasoning). `sft_source=all_correct` also keeps the first-pass correct traces.
On the real data the seed's Llama-3.1-70B-Instruct was right on 1,225 of 1,417 first time and recovered 125.

The backend is rebuilt from the answers run's config.yaml (same engine, model, server), so the re-asks come
from the model that answered; `backend_overrides` changes single keys (e.g. concurrency).

`min_sft_rows` (0 in production) is a CPU-profile aid: a tiny random-weight model essentially never writes
"答案是X", so nothing is recovered. When fewer rows than that exist, rows whose output is the bare template
line "因此答案是：<gold letter>" are added, labelled origin=gold_template in traces.jsonl and counted apart
in report.json. They are not model outputs and never count as recovered.

Launch (repo root):
    python src/21_logic_reflect.py --config configs/tiny.yaml
    python src/21_logic_reflect.py --config configs/a100x8.yaml     # the vLLM server of stage 20 must be up

Resume: each try is saved atomically once all its re-asks are back; a re-run reuses saved tries and goes
on with the next (granularity: one try). A finished run (DONE.json) is skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from arena_distill import config as C
from arena_distill.dist import print0, seed_everything
from arena_distill.gen_backends import Backend, GenOptions, make_backend
from arena_distill.io import (atomic_write_json, atomic_write_jsonl, check_done, fingerprint, mark_done, read_jsonl, require_done,
                              run_stage, StageInputError)
from arena_distill.logic_text import (LETTERS, LogicDataError, extract_answer, iter_questions, read_generations,
                                      read_logic_data, select_problems)


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class ReflectConfig:
    logic_dir: str = C.field("data/logic", help="where generation runs live")
    answers_run: str = C.field("answer_train", help="stage-20 run (split=train) whose attempt 0 is the first pass")
    out_name: str = C.field("reflect", help="output folder under logic_dir")
    max_tries: int = C.field(6, help="re-asks per wrong question (the seed: 6)")
    temperature: float = C.field(0.7, help="sampling temperature of the re-asks (must be > 0)")
    max_new_tokens: int = C.field(0, help="completion cap of the re-asks; 0 = the answers run's value")
    backend_overrides: dict = C.field({}, help="keys of the answers run's backend settings to change, e.g. "
                                               "'{concurrency: 16}'")
    valid: str = C.field("options", help="letters an answer may take when scoring the first pass and the re-asks: "
                                         "options = the question's own; all = A-G, as the seed's extract()")
    sft_source: str = C.field("recovered", help="recovered (the seed: only traces recovered by reflection) | "
                                                "all_correct (first-pass correct + recovered)")
    min_sft_rows: int = C.field(0, help="CPU-profile aid: pad the SFT data with labelled gold-template rows up to "
                                        "this many (0 = never)")
    seed: int = C.field(2025, help="try t samples with seed + t * 1_000_003 (+ prompt index)")
    force: bool = C.field(False, help="redo even if DONE.json exists")

    def __post_init__(self) -> None:
        if self.max_tries < 0:
            raise C.ConfigError("max_tries must be >= 0")
        if self.max_tries and self.temperature <= 0:
            raise C.ConfigError("temperature must be > 0: greedy re-asks repeat the same wrong answer")
        if self.valid not in ("options", "all"):
            raise C.ConfigError(f"valid must be options or all, got {self.valid!r}")
        if self.sft_source not in ("recovered", "all_correct"):
            raise C.ConfigError(f"sft_source must be recovered or all_correct, got {self.sft_source!r}")


# ------------------------------------------------------------------------------------------ retry loop
def self_reflect(items: list[dict], backend: Backend, *, max_tries: int, temperature: float, max_new_tokens: int,
                 seed: int, load_try: Callable[[int], list[dict] | None] = lambda t: None,
                 save_try: Callable[[int, list[dict]], None] = lambda t, rows: None) -> tuple[dict, list[dict]]:
    """Re-ask every item until its extracted letter equals its gold answer, at most ``max_tries`` times.

    ``items``: ``{"id", "qid", "prompt", "answer", "letters"}`` (the wrong first-pass questions). Each try
    sends all still-unresolved prompts in one ``backend.generate`` call (n=1). ``load_try(t)`` may return
    the saved rows of try t (resume); ``save_try(t, rows)`` persists a finished try.
    Returns ``(recovered, rows)``: ``recovered[(id, qid)]`` = the first correct row; ``rows`` = every re-ask.
    """
    recovered: dict[tuple[str, int], dict] = {}
    all_rows: list[dict] = []
    for t in range(1, max_tries + 1):
        pending = [it for it in items if (it["id"], it["qid"]) not in recovered]
        if not pending:
            break
        rows = load_try(t)
        if rows is None:
            texts = backend.generate([it["prompt"] for it in pending], n=1, temperature=temperature,
                                     max_new_tokens=max_new_tokens, seed=seed + t * 1_000_003)
            rows = [{"id": it["id"], "qid": it["qid"], "attempt": t, "prompt": it["prompt"], "output": out[0],
                     "pred": extract_answer(out[0], it["letters"]), "answer": it["answer"]}
                    for it, out in zip(pending, texts)]
            save_try(t, rows)
        letters = {(it["id"], it["qid"]): it["letters"] for it in pending}
        for row in rows:
            key = (row["id"], row["qid"])
            if key in letters and key not in recovered and extract_answer(row["output"], letters[key]) == row["answer"]:
                recovered[key] = row
        all_rows.extend(rows)
        print0(f"[logic_reflect] try {t}/{max_tries}: {len(pending)} asked, recovered so far {len(recovered)}")
    return recovered, all_rows


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(ReflectConfig, "logic_reflect", argv)
    out = Path(cfg.logic_dir) / cfg.out_name
    fp = fingerprint(cfg)
    if check_done(out, fp, cfg.force, "logic_reflect"):
        return {"skipped": True, "out": str(out)}
    if cfg.force and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- data
    run = Path(cfg.logic_dir) / cfg.answers_run
    require_done(run, "python src/20_logic_answer.py split=train", what="first-pass generations")
    saved = C.read_saved_config(run / "config.yaml")
    acfg = saved["config"]
    data = select_problems(read_logic_data(saved["data_file"], require_answers=True,
                                           on_error=acfg.get("on_bad_line", "raise")), saved["problems"])
    gens = read_generations(run / "generations.jsonl")
    first = {(r["id"], r["qid"]): r for r in gens if r["attempt"] == 0}
    seed = seed_everything(cfg.seed)

    first_ok, wrong = [], []
    for p, qid, q in iter_questions(data.problems):
        row = first.get((p.id, qid))
        letters = LETTERS if cfg.valid == "all" else q.letters
        pred = extract_answer(row["output"], letters) if row else None
        item = {"id": p.id, "qid": qid, "answer": q.answer, "letters": letters,
                "prompt": row["prompt"] if row else None, "output": row["output"] if row else None}
        (first_ok if pred == q.answer else wrong).append(item)
    missing = [it for it in wrong if it["prompt"] is None]
    if missing:
        raise StageInputError(f"{run}/generations.jsonl has no attempt 0 for {len(missing)} questions "
                              f"(e.g. {missing[0]['id']}/{missing[0]['qid']}); re-run stage 20 with force=true")
    n_q = len(first_ok) + len(wrong)
    print0(f"[logic_reflect] first pass: {len(first_ok)}/{n_q} correct ({len(first_ok) / n_q:.4f}); "
           f"re-asking {len(wrong)} up to {cfg.max_tries} times")
    out.mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, out, seed=seed, answers_run=str(run))

    # ------------------------------------------------------------------------------------------ re-asks
    opts = GenOptions(**{f.name: acfg[f.name] for f in dataclasses.fields(GenOptions) if f.name in acfg})
    opts = dataclasses.replace(opts, **cfg.backend_overrides)
    backend_box: dict = {}

    class LazyBackend:  # build the engine only when a try is not on disk
        name = opts.backend

        def generate(self, *args, **kwargs):
            if "b" not in backend_box:
                backend_box["b"] = make_backend(opts)
            return backend_box["b"].generate(*args, **kwargs)

    tries = out / "tries"

    def load_try(t: int) -> list[dict] | None:
        f = tries / f"try_{t}.jsonl"
        return read_jsonl(f) if f.is_file() else None

    t0 = time.perf_counter()
    recovered, retry_rows = self_reflect(
        wrong, LazyBackend(), max_tries=cfg.max_tries, temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens or int(acfg.get("max_new_tokens", 2048)), seed=cfg.seed,
        load_try=load_try, save_try=lambda t, rows: atomic_write_jsonl(tries / f"try_{t}.jsonl", rows))

    # --------------------------------------------------------------------------------- traces, SFT data
    traces = [{**{k: it[k] for k in ("id", "qid", "prompt", "output", "answer")}, "attempt": 0,
               "pred": it["answer"], "origin": "first_pass"} for it in first_ok]
    traces += [{**r, "origin": "recovered"} for r in recovered.values()]
    keep = [t for t in traces if cfg.sft_source == "all_correct" or t["origin"] == "recovered"]
    never = [it for it in wrong if (it["id"], it["qid"]) not in recovered]
    n_gold = 0
    if len(keep) < cfg.min_sft_rows:
        pool = never + [it for it in first_ok if cfg.sft_source == "recovered"]
        for it in pool[:cfg.min_sft_rows - len(keep)]:
            keep.append({"id": it["id"], "qid": it["qid"], "attempt": None, "prompt": it["prompt"],
                         "output": f"因此答案是：{it['answer']}", "pred": it["answer"], "answer": it["answer"],
                         "origin": "gold_template"})
            n_gold += 1
        print0(f"[logic_reflect] only {len(keep) - n_gold} real SFT rows < min_sft_rows={cfg.min_sft_rows}: "
               f"added {n_gold} gold_template rows (output = the bare answer line, not model text)")
    order = {(p.id, qid): i for i, (p, qid, _) in enumerate(iter_questions(data.problems))}
    keep.sort(key=lambda t: order[(t["id"], t["qid"])])
    traces_out = sorted(traces, key=lambda t: order[(t["id"], t["qid"])]) + \
        [t for t in keep if t["origin"] == "gold_template"]
    sft = [{"instruction": t["prompt"], "input": "", "output": t["output"]} for t in keep]

    by_try = {str(t): 0 for t in range(1, cfg.max_tries + 1)}
    for r in recovered.values():
        by_try[str(r["attempt"])] += 1
    report = {"n_questions": n_q, "first_pass_correct": len(first_ok), "first_pass_accuracy": len(first_ok) / n_q,
              "n_wrong_first_pass": len(wrong), "recovered": len(recovered), "never_recovered": len(never),
              "recovered_by_try": by_try, "accuracy_after_reflection": (len(first_ok) + len(recovered)) / n_q,
              "n_reasks": len(retry_rows), "max_tries": cfg.max_tries, "temperature": cfg.temperature,
              "sft_source": cfg.sft_source, "sft_rows": len(sft),
              "sft_rows_by_origin": {o: sum(t["origin"] == o for t in keep)
                                     for o in ("first_pass", "recovered", "gold_template")},
              "answers_run": str(run), "seconds": round(time.perf_counter() - t0, 1)}
    if not sft:
        raise StageInputError(f"no SFT rows: {len(recovered)} recovered with sft_source={cfg.sft_source}; "
                              f"use sft_source=all_correct, more max_tries, or (CPU profile) min_sft_rows")
    atomic_write_jsonl(out / "traces.jsonl", traces_out)
    atomic_write_json(out / "sft.json", sft)
    atomic_write_json(out / "report.json", report)
    mark_done(out, fingerprint=fp, stage="logic_reflect", sft_rows=len(sft), recovered=len(recovered))
    print0(f"[logic_reflect] done: first pass {len(first_ok)}/{n_q}, recovered {len(recovered)}, never "
           f"{len(never)}; {len(sft)} SFT rows {report['sft_rows_by_origin']} -> {out / 'sft.json'}")
    return report


if __name__ == "__main__":
    run_stage(main, LogicDataError)
