"""Tianchi logical-reasoning MCQ data: reading (line-numbered errors), the prompt template, answer
extraction, scoring and the competition answer-file writer.

Data (``round1_{train,test}_data.jsonl``): one JSON object per line, ``{"id", "problem", "questions":
[{"question", "options": [...], "answer"?}]}``. Option letters A, B, C, ... follow list order; the test
file has no ``answer``. Questions are addressed as ``(problem id, 0-based question index)``.

The prompt template is versioned: ``TEMPLATES[version]`` never changes once shipped (a fine-tuned model
learnt that exact text, 8-space indents and trailing 8-space line included); a new wording gets a new
version name. ``seed_v1`` is byte-identical to the seed recipe's ``prompt_template == 1``.

Extraction: every match of ``答案是[:： ,]*([A-G])`` in the output; the last one whose letter is a valid
option of *that* question wins; none -> ``None``. (The seed called its ``extract`` with the default
letter list A-G, i.e. it accepted a letter past the last option; ``valid="all"`` reproduces that.)
"""
from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

from .readers import read_text

LETTERS = "ABCDEFG"
ANSWER_RE = re.compile(r"答案是[:： ,]*([A-G])")

# --------------------------------------------------------------------------------------------------
# Prompt templates (versioned; never edit a shipped one)

TEMPLATES: dict[str, str] = {
    "seed_v1": (
        "你是一个逻辑推理专家，擅长解决逻辑推理问题。以下是一个逻辑推理的题目，形式为单项选择题。所有的问题都是"
        "（close-world assumption）闭世界假设，即未观测事实都为假。请逐步分析问题选择最正确的答案并在最后一行输出，"
        "最后一行的格式为\"因此答案是：A\"。题目如下：\n"
        "\n"
        "        ### 题目:\n"
        "        {problem}\n"
        "\n"
        "        ### 问题:\n"
        "        {question}\n"
        "        {options}\n"
        "        "
    ),
}
DEFAULT_TEMPLATE = "seed_v1"
_PLACEHOLDER = re.compile(r"\{(problem|question|options)\}")


def render_options(options: list[str]) -> str:
    """``A. text`` lines joined by ``\\n`` (the seed's rendering)."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options: at most {len(LETTERS)} (A-G) are supported")
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def render_prompt(problem: str, question: str, options: list[str], template: str = DEFAULT_TEMPLATE) -> str:
    if template not in TEMPLATES:
        raise KeyError(f"unknown prompt template {template!r} (known: {', '.join(TEMPLATES)})")
    # One pass over the template only, not str.format: problem texts contain braces (sets, code, even a
    # literal "{question}") that must stay as they are.
    values = {"problem": problem, "question": question, "options": render_options(options)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATES[template])


# --------------------------------------------------------------------------------------------------
# Answer extraction

def valid_letters(n_options: int) -> str:
    return LETTERS[:n_options]


def extract_answer(output: str | None, valid: str | int | None = None) -> str | None:
    """Last ``答案是X`` whose X is in ``valid`` (a letter string, or a number of options; None = A-G)."""
    if not output:
        return None
    letters = LETTERS if valid is None else (valid_letters(valid) if isinstance(valid, int) else valid)
    for letter in reversed(ANSWER_RE.findall(output)):
        if letter in letters:
            return letter
    return None


# --------------------------------------------------------------------------------------------------
# Data model and reading

class LogicDataError(ValueError):
    """A malformed data line; the message names the file and the line number."""


@dataclass
class Question:
    question: str
    options: list[str]
    answer: str | None = None

    @property
    def letters(self) -> str:
        return valid_letters(len(self.options))


@dataclass
class Problem:
    id: str
    problem: str
    questions: list[Question]
    raw: dict = field(default_factory=dict, repr=False)  # the original object (key order kept for writing)


@dataclass
class LogicData:
    path: str
    problems: list[Problem]
    n_lines: int = 0
    skipped_lines: list[str] = field(default_factory=list)     # "line N: reason" for lines dropped
    dropped_answers: list[str] = field(default_factory=list)   # "line N question Q: reason" answers removed

    @property
    def n_questions(self) -> int:
        return sum(len(p.questions) for p in self.problems)

    @property
    def labelled(self) -> bool:
        return all(q.answer is not None for p in self.problems for q in p.questions)

    def report(self) -> dict:
        return {"path": self.path, "n_problems": len(self.problems), "n_questions": self.n_questions,
                "n_lines": self.n_lines, "n_skipped_lines": len(self.skipped_lines),
                "n_dropped_answers": len(self.dropped_answers),
                "skipped": self.skipped_lines[:20], "dropped": self.dropped_answers[:20]}


def _parse_line(obj: object, lineno: int, require_answers: bool) -> tuple[Problem, list[str]]:
    """Parse one object; structural errors raise LogicDataError, answer errors are returned as issues."""
    where = f"line {lineno}"
    if not isinstance(obj, dict):
        raise LogicDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, tp in (("id", str), ("problem", str), ("questions", list)):
        if key not in obj:
            raise LogicDataError(f"{where}: missing field '{key}'")
        if not isinstance(obj[key], tp):
            raise LogicDataError(f"{where}: field '{key}' must be {tp.__name__}, got {type(obj[key]).__name__}")
    if not obj["questions"]:
        raise LogicDataError(f"{where} (id {obj['id']}): 'questions' is empty")
    questions, issues = [], []
    for qi, q in enumerate(obj["questions"]):
        qwhere = f"{where} (id {obj['id']}) question {qi}"
        if not isinstance(q, dict):
            raise LogicDataError(f"{qwhere}: expected an object")
        if not isinstance(q.get("question"), str):
            raise LogicDataError(f"{qwhere}: missing or non-string 'question'")
        opts = q.get("options")
        if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
            raise LogicDataError(f"{qwhere}: 'options' must be a non-empty list of strings")
        if len(opts) > len(LETTERS):
            raise LogicDataError(f"{qwhere}: {len(opts)} options, at most {len(LETTERS)} (A-G) supported")
        answer = q.get("answer")
        if answer is not None and answer not in valid_letters(len(opts)):
            issues.append(f"{qwhere}: answer {answer!r} is not one of the options "
                          f"{', '.join(valid_letters(len(opts)))}")
            answer = None
        elif answer is None and require_answers:
            issues.append(f"{qwhere}: missing 'answer'")
        questions.append(Question(q["question"], list(opts), answer))
    return Problem(obj["id"], obj["problem"], questions, raw=obj), issues


def read_logic_data(path: str | os.PathLike, *, require_answers: bool = False,
                    on_error: Literal["raise", "skip"] = "raise") -> LogicData:
    """Read a Tianchi JSONL file.

    ``on_error="raise"``: the first bad line raises LogicDataError naming ``path:line``.
    ``on_error="skip"`` (counted repair): a line that is not JSON or misses fields is dropped, an answer
    letter outside the options is removed (the question stays, unlabelled); both are listed in the
    returned ``LogicData`` so callers can report the counts. Duplicate problem ids always raise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"logic data file not found: {path}")
    data = LogicData(path=str(path), problems=[])
    seen: dict[str, int] = {}
    # Strict UTF-8 and an empty file is an error (readers.read_text): never a silently empty problem set.
    with io.StringIO(read_text(path, fix="re-download the file (UTF-8 JSON lines)")) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            data.n_lines += 1
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LogicDataError(f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                problem, issues = _parse_line(obj, lineno, require_answers)
            except LogicDataError as exc:
                if on_error == "raise":
                    raise LogicDataError(f"{path}: {exc}") from None
                data.skipped_lines.append(str(exc))
                continue
            if issues and on_error == "raise":
                raise LogicDataError(f"{path}: {issues[0]}")
            data.dropped_answers.extend(issues)
            if problem.id in seen:
                raise LogicDataError(f"{path}: line {lineno}: duplicate problem id {problem.id!r} "
                                     f"(first on line {seen[problem.id]})")
            seen[problem.id] = lineno
            data.problems.append(problem)
    return data


def parse_slice(spec: str) -> slice:
    """``"20:40"`` / ``":20"`` / ``""`` (everything) -> slice over the problem list."""
    spec = (spec or "").strip()
    if not spec or spec == ":":
        return slice(None)
    if ":" not in spec:
        raise ValueError(f"problem range {spec!r}: expected 'start:stop' (e.g. '0:20', ':20', '')")
    a, b = spec.split(":", 1)
    return slice(int(a) if a.strip() else None, int(b) if b.strip() else None)


def select_problems(data: LogicData, spec: str) -> LogicData:
    sub = LogicData(path=data.path, problems=data.problems[parse_slice(spec)], n_lines=data.n_lines,
                    skipped_lines=data.skipped_lines, dropped_answers=data.dropped_answers)
    return sub


def iter_questions(problems: Iterable[Problem]) -> Iterator[tuple[Problem, int, Question]]:
    for p in problems:
        for qid, q in enumerate(p.questions):
            yield p, qid, q


def prompt_for(p: Problem, q: Question, template: str = DEFAULT_TEMPLATE) -> str:
    return render_prompt(p.problem, q.question, q.options, template)


# --------------------------------------------------------------------------------------------------
# Generations: one line per attempt (the contract between answering, reflection and evaluation)

GEN_KEYS = ("id", "qid", "attempt", "prompt", "output", "pred", "answer")


def generation_row(p: Problem, qid: int, attempt: int, prompt: str, output: str, valid: str | None = None) -> dict:
    """One generations line; ``pred`` is extracted with ``valid`` letters (default: the question's options)."""
    q = p.questions[qid]
    return {"id": p.id, "qid": qid, "attempt": attempt, "prompt": prompt, "output": output,
            "pred": extract_answer(output, q.letters if valid is None else valid), "answer": q.answer}


def read_generations(path: str | os.PathLike) -> list[dict]:
    """Generations JSONL; a bad line raises naming the line. Keys beyond ``GEN_KEYS`` are kept."""
    rows = []
    # Strict UTF-8; an empty file is an error (it would score as 0 answered, silently).
    with io.StringIO(read_text(path, fix="re-run src/20_logic_answer.py, which writes it")) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LogicDataError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            for key in ("id", "qid", "output"):
                if key not in row:
                    raise LogicDataError(f"{path}: line {lineno}: missing field '{key}'")
            if not isinstance(row["qid"], int) or isinstance(row["qid"], bool):
                raise LogicDataError(f"{path}: line {lineno}: 'qid' must be an integer")
            row.setdefault("attempt", 0)
            row["_line"] = lineno
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Scoring (the evaluator) and the competition answer file

def _majority(letters: list[str]) -> str | None:
    """Most frequent letter; ties go to the letter that reached the top count first (attempt order)."""
    if not letters:
        return None
    counts = Counter(letters)
    top = max(counts.values())
    return next(letter for letter in letters if counts[letter] == top)


def choose_predictions(problems: list[Problem], generations: list[dict], *, vote: Literal["attempt", "majority"] = "attempt",
                       attempt: int = 0, valid: Literal["options", "all"] = "options") -> tuple[dict, dict]:
    """Pick one extracted letter per question (``None`` = no answer) from raw outputs.

    ``vote="attempt"``: the output of attempt ``attempt`` (default 0); ``vote="majority"``: the most frequent
    extracted letter over all attempts of the question (attempts without an answer do not vote).
    Returns ``(preds, info)``: ``preds[(id, qid)]`` for every question of ``problems``; ``info`` counts
    generations that match no question of the data, and duplicate (id, qid, attempt) rows (refused).
    """
    index = {(p.id, qid): q for p, qid, q in iter_questions(problems)}
    by_q: dict[tuple[str, int], list[dict]] = {}
    seen: dict[tuple, int] = {}
    unmatched = 0
    for row in generations:
        key = (row["id"], row["qid"])
        if key not in index:
            unmatched += 1
            continue
        full = (row["id"], row["qid"], row["attempt"])
        if full in seen:
            raise LogicDataError(f"duplicate generation for problem {row['id']} question {row['qid']} attempt "
                                 f"{row['attempt']} (lines {seen[full]} and {row.get('_line', '?')})")
        seen[full] = row.get("_line", 0)
        by_q.setdefault(key, []).append(row)
    preds: dict[tuple[str, int], str | None] = {}
    for key, q in index.items():
        letters = LETTERS if valid == "all" else q.letters
        rows = sorted(by_q.get(key, []), key=lambda r: r["attempt"])
        if vote == "attempt":
            chosen = [r for r in rows if r["attempt"] == attempt]
            preds[key] = extract_answer(chosen[0]["output"], letters) if chosen else None
        elif vote == "majority":
            got = [extract_answer(r["output"], letters) for r in rows]
            preds[key] = _majority([g for g in got if g is not None])
        else:
            raise ValueError(f"unknown vote {vote!r} (expected 'attempt' or 'majority')")
    info = {"n_generations": len(generations), "n_unmatched_generations": unmatched,
            "n_questions_with_generation": len(by_q)}
    return preds, info


def score(problems: list[Problem], preds: dict[tuple[str, int], str | None]) -> dict:
    """``{"n_questions", "n_answered", "n_correct", "accuracy", "per_problem": [...]}``.

    accuracy = correct / all questions of ``problems`` (no generation or no extracted answer = wrong).
    With unlabelled data, ``n_correct`` and ``accuracy`` are None.
    """
    labelled = all(q.answer is not None for _, _, q in iter_questions(problems))
    n_q = n_ans = n_ok = 0
    per_problem = []
    for p in problems:
        row = {"id": p.id, "n_questions": len(p.questions), "n_answered": 0, "n_correct": 0, "preds": [],
               "answers": [q.answer for q in p.questions]}
        for qid, q in enumerate(p.questions):
            pred = preds.get((p.id, qid))
            row["preds"].append(pred)
            row["n_answered"] += pred is not None
            row["n_correct"] += pred is not None and pred == q.answer
        n_q += row["n_questions"]
        n_ans += row["n_answered"]
        n_ok += row["n_correct"]
        if not labelled:
            row["n_correct"] = None
        per_problem.append(row)
    return {"n_questions": n_q, "n_answered": n_ans, "n_correct": n_ok if labelled else None,
            "accuracy": (n_ok / n_q if n_q else 0.0) if labelled else None, "per_problem": per_problem}


def answer_file_rows(problems: list[Problem], preds: dict[tuple[str, int], str | None]) -> list[dict]:
    """Competition format: the original problem objects (same key order) with each question's ``answer``
    set to the prediction where one was extracted, and absent where not (a gold answer is never kept)."""
    out = []
    for p in problems:
        obj = dict(p.raw) if p.raw else {"problem": p.problem, "questions": [], "id": p.id}
        questions = []
        raw_qs = p.raw.get("questions") if p.raw else None
        for qid, q in enumerate(p.questions):
            qd = dict(raw_qs[qid]) if raw_qs else {"question": q.question, "options": q.options}
            qd.pop("answer", None)
            pred = preds.get((p.id, qid))
            if pred is not None:
                qd["answer"] = pred
            questions.append(qd)
        obj["questions"] = questions
        out.append(obj)
    return out
