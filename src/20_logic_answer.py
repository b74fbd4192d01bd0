"""Stage 20: answer every question of a Tianchi logic file with an LLM, `n` samples per question.

Reads   data/tianchi_logic/round1_{train_data_fix,test_data}.jsonl   (config: train_file / test_file)
        a model: model_path/<model>/ (hf, vllm_offline, auto) or a running OpenAI-compatible server
Writes  data/logic/<run_name>/generations.jsonl   one line per attempt:
            {"id", "qid" (0-based question index), "attempt", "prompt", "output" (raw text),
             "pred" (letter extracted from output, or null), "answer" (gold letter or null),
             "tries" (calls it took: > 1 when re-asked for lack of an answer, see answer_tries)}
        data/logic/<run_name>/{summary.json, config.yaml, DONE.json}, parts/ (resume chunks)

`split` picks the questions: train = train_file[train_problems], eval = train_file[eval_problems] (the
held-out slice the fp / 4-bit / 3-bit models are compared on), test = test_file[test_problems].

Launch (repo root):
    # CPU / tiny profile (transformers backend on a tiny random-weight model)
    python src/20_logic_answer.py --config configs/tiny.yaml
    python src/20_logic_answer.py --config configs/tiny.yaml split=eval run_name=eval_fp \\
        model=model_save/logic_merged backend=auto temperature=0 n=1

    # Production, the seed's way: Llama-3.1-70B-Instruct behind vLLM's OpenAI server, TP over 8 GPUs
    vllm serve model_path/llama31_70b_instruct --served-model-name Meta-Llama-3.1-70B-Instruct \\
        --tensor-parallel-size 8 --max-model-len 8192 --dtype bfloat16 --gpu-memory-utilization 0.9 \\
        --max-num-seqs 256 --port 8000 &
    python src/20_logic_answer.py --config configs/a100x8.yaml        # backend=vllm_server (the YAML)

    # Production without a server: vLLM offline, tensor parallel in-process
    python src/20_logic_answer.py --config configs/a100x8.yaml backend=vllm_offline \\
        model=llama31_70b_instruct tensor_parallel_size=8

Answering like the seed's final run (its api_retry in `--mode infer`): sample at vLLM's chat defaults
(temperature 0.7, top_p 1.0) and, while no answer letter can be extracted, ask again, at most `answer_tries`
calls in all (the seed: 6); the last text is kept either way. `answer_tries=1` asks once (the seed's train
first pass, `--mode gen_dpo`); `temperature=0 answer_tries=1` is greedy. The runbook picks the final-answer
setting with FINAL_DECODING=seed|greedy (docs/reasoning.md). Re-asks are seeded like the first call, so a
re-run on the same engine gives the same texts.

Resume: questions are answered in chunks of `chunk_size` prompts, each chunk saved atomically under
parts/; re-running the same command skips finished chunks (granularity: one chunk). A finished run
(DONE.json) is skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from arena_distill import config as C
from arena_distill.dist import print0, seed_everything
from arena_distill.gen_backends import GEN_TRANSPORT_KEYS, GenOptions, make_backend
from arena_distill.io import (atomic_write_json, atomic_write_jsonl, check_done, fingerprint, mark_done, read_jsonl, run_stage,
                              StageInputError)
from arena_distill.logic_text import (LETTERS, TEMPLATES, LogicDataError, extract_answer, generation_row,
                                      iter_questions, prompt_for, read_logic_data, select_problems)


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class AnswerConfig(GenOptions):
    split: str = C.field("train", help="train | eval | test: which file and problem range to answer")
    train_file: str = C.field("data/tianchi_logic/round1_train_data_fix.jsonl",
                              help="labelled problems (JSONL); default: the seed's corrected labels "
                                   "(data/tianchi_logic/README.md); round1_train_data.jsonl = the original")
    test_file: str = C.field("data/tianchi_logic/round1_test_data.jsonl", help="unlabelled problems (JSONL)")
    train_problems: str = C.field("", help="problem range 'start:stop' of train_file for split=train ('' = all)")
    eval_problems: str = C.field("", help="problem range of train_file for split=eval ('' = all)")
    test_problems: str = C.field("", help="problem range of test_file for split=test ('' = all)")
    on_bad_line: str = C.field("raise", help="raise = stop at a malformed data line (naming it); skip = drop it, "
                                             "counted in summary.json")
    template: str = C.field("seed_v1", help=f"prompt template version (known: {', '.join(TEMPLATES)})")
    valid: str = C.field("options", help="letters an answer may take: options = the question's own; all = A-G, as "
                                         "the seed's extract() (decides `pred` and the answer_tries re-asks)")
    answer_tries: int = C.field(1, help="calls per sample while no answer letter can be extracted (the seed's "
                                        "final answering: 6; 1 = ask once)")
    n: int = C.field(1, help="samples per question (attempts 0..n-1)")
    temperature: float = C.field(0.7, help="sampling temperature (0 = greedy)")
    max_new_tokens: int = C.field(2048, help="completion length cap")
    chunk_size: int = C.field(512, help="prompts per saved chunk (resume granularity)")
    seed: int = C.field(2025, help="sampling seed (chunk k uses seed + k * chunk_size + prompt index)")
    logic_dir: str = C.field("data/logic", help="where generation runs go")
    run_name: str = C.field("", help="output folder name under logic_dir; default answer_<split>")
    force: bool = C.field(False, help="regenerate even if DONE.json exists")

    def __post_init__(self) -> None:
        if self.split not in ("train", "eval", "test"):
            raise C.ConfigError(f"split must be train, eval or test, got {self.split!r}")
        if self.on_bad_line not in ("raise", "skip"):
            raise C.ConfigError(f"on_bad_line must be raise or skip, got {self.on_bad_line!r}")
        if self.template not in TEMPLATES:
            raise C.ConfigError(f"unknown template {self.template!r} (known: {', '.join(TEMPLATES)})")
        if self.n < 1 or self.chunk_size < 1 or self.answer_tries < 1:
            raise C.ConfigError("n, chunk_size and answer_tries must be >= 1")
        if self.answer_tries > 1 and self.temperature <= 0:
            raise C.ConfigError("answer_tries > 1 needs temperature > 0: a greedy re-ask repeats the same text")
        if self.valid not in ("options", "all"):
            raise C.ConfigError(f"valid must be options or all, got {self.valid!r}")
        if self.backend != "vllm_server" and not self.model:
            raise C.ConfigError(f"model= is required for backend={self.backend}")


def data_for_split(cfg: AnswerConfig):
    """(file, problem range) of the split; later stages read both back from this run's config.yaml."""
    return {"train": (cfg.train_file, cfg.train_problems), "eval": (cfg.train_file, cfg.eval_problems),
            "test": (cfg.test_file, cfg.test_problems)}[cfg.split]


def answer_with_retries(backend, prompts: list[str], letters: list[str], *, n: int, tries: int, temperature: float,
                        max_new_tokens: int, seed: int, top_p: float) -> tuple[list[list[str]], list[list[int]]]:
    """``n`` samples per prompt; a sample with no extractable letter (of ``letters[i]``) is asked again, all such
    samples in one batched call per round, until it has one or ``tries`` calls were made. Returns
    ``(texts, calls)``: the last text of every sample and the number of calls it took."""
    texts = backend.generate(prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                             top_p=top_p)
    for i, samples in enumerate(texts):
        if len(samples) != n:
            raise RuntimeError(f"backend returned {len(samples)} samples for prompt {i}, expected {n}")
    calls = [[1] * n for _ in prompts]
    for r in range(1, tries):
        pending = [(i, j) for i in range(len(prompts)) for j in range(n)
                   if extract_answer(texts[i][j], letters[i]) is None]
        if not pending:
            break
        # round r has its own seed stream (the same offsets as stage 21's tries), so re-asks are reproducible
        again = backend.generate([prompts[i] for i, _ in pending], n=1, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed + r * 1_000_003, top_p=top_p)
        for (i, j), out in zip(pending, again):
            texts[i][j] = out[0]
            calls[i][j] += 1
    return texts, calls


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(AnswerConfig, "logic_answer", argv)
    out = Path(cfg.logic_dir) / (cfg.run_name or f"answer_{cfg.split}")
    fp = fingerprint(cfg, exclude=("chunk_size", "run_name", *GEN_TRANSPORT_KEYS))
    if check_done(out, fp, cfg.force, "logic_answer"):
        return {"skipped": True, "out": str(out)}
    if cfg.force and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- data
    data_file, problem_range = data_for_split(cfg)
    if not Path(data_file).is_file():
        raise StageInputError(f"missing data file: {data_file} -> copy ../shared/data/tianchi_logic/"
                              f"{Path(data_file).name} into {Path(data_file).parent}/ (see data/README.md)")
    data = select_problems(read_logic_data(data_file, on_error=cfg.on_bad_line), problem_range)  # type: ignore[arg-type]
    if not data.problems:
        raise StageInputError(f"{data_file}[{problem_range}] selects no problems")
    questions = list(iter_questions(data.problems))
    prompts = [prompt_for(p, q, cfg.template) for p, _, q in questions]
    seed = seed_everything(cfg.seed)
    print0(f"[logic_answer] split={cfg.split} file={data_file} range='{problem_range}' problems={len(data.problems)} "
           f"questions={len(questions)} n={cfg.n} T={cfg.temperature} backend={cfg.backend} "
           f"model={cfg.model or cfg.served_model_name or '(server default)'} -> {out}")
    out.mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, out, seed=seed, data_file=data_file, problems=problem_range)

    # --------------------------------------------------------------------------------------- generation
    parts = out / "parts"
    backend = None
    t0 = time.perf_counter()
    rows: list[dict] = []
    for k, start in enumerate(range(0, len(prompts), cfg.chunk_size)):
        part = parts / f"part_{k:05d}.jsonl"
        chunk = questions[start:start + cfg.chunk_size]
        if part.is_file():
            done_rows = read_jsonl(part)
            if (len(done_rows) == len(chunk) * cfg.n and done_rows[0]["id"] == chunk[0][0].id
                    and (done_rows[-1]["id"], done_rows[-1]["qid"]) == (chunk[-1][0].id, chunk[-1][1])):
                rows.extend(done_rows)
                print0(f"[logic_answer] chunk {k}: reusing {part}")
                continue
        if backend is None:
            backend = make_backend(cfg)
        letters = [LETTERS if cfg.valid == "all" else q.letters for _, _, q in chunk]
        texts, calls = answer_with_retries(backend, prompts[start:start + cfg.chunk_size], letters, n=cfg.n,
                                           tries=cfg.answer_tries, temperature=cfg.temperature,
                                           max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + start, top_p=cfg.top_p)
        chunk_rows = []
        for (p, qid, _), prompt, samples, ncalls, valid in zip(chunk, prompts[start:start + cfg.chunk_size], texts,
                                                               calls, letters):
            chunk_rows.extend({**generation_row(p, qid, a, prompt, text, valid), "tries": c}
                              for a, (text, c) in enumerate(zip(samples, ncalls)))
        atomic_write_jsonl(part, chunk_rows)
        rows.extend(chunk_rows)
        print0(f"[logic_answer] chunk {k}: {len(chunk)} questions in {time.perf_counter() - t0:.1f}s")

    # ------------------------------------------------------------------------------------ save/summary
    atomic_write_jsonl(out / "generations.jsonl", rows)
    first = [r for r in rows if r["attempt"] == 0]
    labelled = all(r["answer"] is not None for r in first)
    summary = {"split": cfg.split, "data_file": data_file, "problems": problem_range,
               "n_problems": len(data.problems), "n_questions": len(questions), "n_rows": len(rows),
               "n_answered_attempt0": sum(r["pred"] is not None for r in first),
               "n_correct_attempt0": sum(r["pred"] is not None and r["pred"] == r["answer"] for r in first)
               if labelled else None,
               "n_reasked": sum(r.get("tries", 1) > 1 for r in rows),
               "n_calls": sum(r.get("tries", 1) for r in rows),
               "data_report": data.report(), "backend": getattr(backend, "name", "reused"),
               "seconds": round(time.perf_counter() - t0, 1)}
    if labelled:
        summary["accuracy_attempt0"] = summary["n_correct_attempt0"] / len(questions)
    atomic_write_json(out / "summary.json", summary)
    shutil.rmtree(parts, ignore_errors=True)
    mark_done(out, fingerprint=fp, stage="logic_answer", n_rows=len(rows))
    acc = f", attempt-0 accuracy {summary['accuracy_attempt0']:.4f}" if labelled else ""
    print0(f"[logic_answer] done: {len(rows)} generations, {summary['n_answered_attempt0']}/{len(questions)} "
           f"with an extracted answer{acc} -> {out / 'generations.jsonl'}")
    return summary


if __name__ == "__main__":
    run_stage(main, LogicDataError, FileNotFoundError)
