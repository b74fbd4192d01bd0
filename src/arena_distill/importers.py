"""Preference data in its public formats -> the one row frame every stage uses.

Output (``read_preferences``): a DataFrame with ``id`` (int64), ``prompt``, ``response_a``, ``response_b``
(turns joined with a newline, as ``arena_text.join_turns``), ``n_turns``, ``label`` (0 = A wins, 1 = B wins,
2 = tie; -1 when the file has no labels and ``need_labels=False``), ``source_id`` (the file's own id, a
string) and ``model_a``/``model_b`` when the file names them; plus an ``ImportReport``.

Formats (``format=``; ``auto`` looks at the columns):

- ``kaggle``: the competition CSV (``id, prompt, response_a, response_b, winner_model_a/b/tie``, cells are
  JSON lists of turns). ``arena-human-preference-55k`` is this layout. Read by ``arena_text.read_arena_csv``
  (its errors and counted repairs), or the same cells from JSONL / parquet.
- ``arena_conversations``: ``lmsys/chatbot_arena_conversations`` (the seed's "33k"): ``question_id``,
  ``conversation_a/b`` = lists of ``{"role", "content"}``, ``winner`` in ``model_a, model_b, tie,
  tie (bothbad)``.
- ``arena_55k``: the later Arena dumps (``arena-human-preference-100k/140k``): ``question_id`` or ``id``;
  ``content`` is a string or a list of typed parts (``{"type": "text", "text": ...}``; image parts are
  dropped, counted); ``winner`` in ``model_a, model_b, tie, both_bad``. A conversation stored as a JSON
  string is parsed. The Kaggle-layout 55k file is read as ``kaggle``. Both Arena layouts accept both
  winner vocabularies. User turns come from ``conversation_a`` (they are the same on both sides); a battle
  whose sides have different user turns keeps side A's (counted ``user_turns_differ``). Multi-turn battles
  keep every turn, joined like the Kaggle file.
- ``pairs``: generic ``prompt, chosen, rejected`` (strings or message lists; ``column_map`` renames
  columns). A/B order is a seeded coin flip per row (hash of seed and the row id, so it does not depend on
  row order); no ties. Also ``prompt, response_a, response_b`` (+ optional ``winner``) as plain text.
- ``ultrafeedback``: ``instruction`` (or ``prompt``) + ``completions``, each with ``response`` and a
  rating (``overall_score`` by default; ``column_map: {score: fine-grained_score}``). Rated completions
  become pairs: the higher rating wins, equal ratings tie, A/B by coin flip. ``ut_pairs=one`` (default)
  keeps one pair per prompt, chosen by the seeded hash: the seed read an ``ultrafeedback_lmsysformat``
  file and kept one row per prompt id (``prepare_data_ut.py``: shuffle with seed 2023, then
  ``drop_duplicates("id")``); its conversion script itself is not in its repository, so the pairing rule
  is ours. ``ut_pairs=all`` keeps every pair.

Ids. Integer ids that fit below ``ID_SPACE`` are kept (Kaggle's); any other id (hex question ids, UUIDs)
gets a deterministic integer from its SHA-1 (collisions resolved in sorted order, so the mapping depends
only on the set of ids); ``write_id_map`` saves ``source_id,id`` next to the output.

Accounting. ``report.rows_in == report.rows_out + sum(report.dropped.values())`` for every file (for
``ultrafeedback`` in prompts; ``pairs_out`` counts the pairs). Drop reasons: ``both_bad`` (with
``both_bad=drop``), ``no_user_turn`` (nothing to judge), ``identical_responses`` (pairs: no preference),
``fewer_than_two_rated`` and ``duplicate_prompt`` (ultrafeedback), ``duplicate_row`` (the same id and the same content again).
An id seen again with different content keeps both rows; the later one's id gets ``#2``, ``#3`` (counted repair
``duplicate_id_renamed``).
With ``need_labels=False`` (scoring) nothing is dropped: every row comes out once, in file order.
A bad row is an ``ImportError_`` naming the file, the row and the field.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import pandas as pd

from . import arena_text as at
from .io import atomic_write_csv, atomic_write_json
from .readers import FileFormatError, iter_lines, read_csv, read_json, read_parquet, read_text

FORMATS = ("auto", "kaggle", "arena_conversations", "arena_55k", "pairs", "ultrafeedback")
ID_SPACE = 10**12  # below the extra-data id bases of stage 2 (33k: 10**12, UT: 2 * 10**12)
WINNERS = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2, "both_bad": 2}
BOTH_BAD = ("tie (bothbad)", "both_bad")
OUT_COLUMNS = ("id", "prompt", "response_a", "response_b", "n_turns", "label", "source_id")


class PreferenceImportError(at.ArenaParseError):
    """A row that cannot be imported; the message names the file, the row and the field."""


@dataclass
class ImportReport:
    file: str
    format: str
    rows_in: int = 0
    rows_out: int = 0
    pairs_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repairs: dict[str, int] = field(default_factory=dict)
    hashed_ids: bool = False

    def check(self) -> None:
        """Every row in is out or dropped for a counted reason (a bug here must not pass silently)."""
        if self.rows_in != self.rows_out + sum(self.dropped.values()):
            raise AssertionError(f"{self.file}: {self.rows_in} rows in != {self.rows_out} out + drops {self.dropped}")

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Reading a table (CSV, JSONL, JSON array, parquet) as records with their row labels

def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".jsonl", ".ndjson", ".json", ".parquet", ".csv"):
        if name.endswith(s):
            return s
    raise FileFormatError(f"{path}: unknown file type (expected .csv, .jsonl, .json or .parquet)")


def read_records(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """``(records, row labels)``: a label says where the row is (``line 7`` of a JSONL, ``row 3`` of a CSV
    counting the header as row 1, ``row 3`` of a parquet counting from 1)."""
    path = Path(path)
    kind = _suffix(path)
    if kind == ".json" and not read_text(path, encoding="utf-8-sig").lstrip().startswith("["):
        kind = ".jsonl"  # `datasets`' to_json writes JSON Lines under a .json name
    if kind in (".jsonl", ".ndjson"):
        records, where = [], []
        for lineno, line in iter_lines(path, encoding="utf-8-sig"):  # a byte-order mark is dropped
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PreferenceImportError(f"{path}: line {lineno} is not valid JSON: {exc.msg} at column "
                                            f"{exc.colno}") from None
            if not isinstance(value, dict):
                raise PreferenceImportError(f"{path}: line {lineno}: expected a JSON object, got "
                                            f"{type(value).__name__}")
            records.append(value)
            where.append(f"line {lineno}")
        if not records:
            raise FileFormatError(f"{path}: no rows")
        return records, where
    if kind == ".json":
        value = read_json(path)
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise FileFormatError(f"{path}: expected a JSON array of objects (or use .jsonl, one object a line)")
        return value, [f"item {i}" for i in range(len(value))]
    if kind == ".parquet":
        df = read_parquet(path, fix="re-download the file")
        return df.to_dict("records"), [f"row {i + 1}" for i in range(len(df))]
    df = read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    return df.to_dict("records"), [f"row {i + 2}" for i in range(len(df))]


def _csv_header(path: Path, encoding: str) -> list[str] | None:
    """The first record of a CSV from its first 64 KiB (a cut multi-byte character at the end is ignored)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode(encoding, errors="ignore")
        return next(csv.reader(io.StringIO(head)))
    except (OSError, LookupError, StopIteration, csv.Error):
        return None


def detect_format(columns: Iterable[str], first: dict | None, suffix: str) -> str:
    cols = set(columns)
    if {"conversation_a", "conversation_b"} <= cols:
        return "arena_55k" if "id" in cols and "question_id" not in cols else "arena_conversations"
    if "completions" in cols:
        return "ultrafeedback"
    if {"chosen", "rejected"} <= cols:
        return "pairs"
    if {"prompt", "response_a", "response_b"} <= cols:
        if suffix == ".csv":
            return "kaggle"
        cell = (first or {}).get("prompt")
        if isinstance(cell, str) and cell.lstrip().startswith("["):
            try:
                if isinstance(json.loads(cell), list):
                    return "kaggle"
            except json.JSONDecodeError:
                pass
        return "pairs"
    raise FileFormatError(f"cannot tell the format from the columns {sorted(cols)}: expected conversation_a/b "
                          f"(Arena), prompt/response_a/response_b (Kaggle or plain pairs), chosen/rejected "
                          f"(pairs) or completions (ultrafeedback); set format= one of {list(FORMATS[1:])} and "
                          f"column_map= if the columns have other names")


# --------------------------------------------------------------------------------------------------
# Cells -> text

def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value: Any) -> Any:
    """Parquet gives nested lists as numpy arrays."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def content_text(content: Any, rep: Counter, where: str) -> str:
    """A message's ``content``: a string, or a list of typed parts (text parts joined by a newline)."""
    content = _as_list(content)
    if _missing(content):
        rep["null_content"] += 1
        return ""
    if isinstance(content, str):
        return at.fix_surrogates(content, rep)
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if part.get("type", "text") == "text":
                    if _missing(part.get("text")):
                        rep["null_text_part"] += 1
                    texts.append("" if _missing(part.get("text")) else str(part.get("text")))
                else:
                    rep[f"{part.get('type')}_part_dropped"] += 1  # images: the judge reads text only
            else:
                raise PreferenceImportError(f"{where}: a content part is {type(part).__name__}, expected a "
                                            f"{{'type', 'text'}} object or a string")
        return at.fix_surrogates("\n".join(texts), rep)
    raise PreferenceImportError(f"{where}: content is {type(content).__name__}, expected a string or a list of parts")


def conversation_turns(value: Any, rep: Counter, where: str) -> tuple[list[str], list[str]]:
    """``(user turns, assistant turns)`` of a list of ``{role, content}`` messages (or its JSON text)."""
    value = _as_list(value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PreferenceImportError(f"{where}: not a list of messages and not JSON ({exc.msg}): "
                                        f"{value[:80]!r}") from None
    if _missing(value):
        rep["null_conversation"] += 1
        return [], []
    if not isinstance(value, list):
        raise PreferenceImportError(f"{where}: expected a list of {{role, content}} messages, got "
                                    f"{type(value).__name__}")
    users, assistants = [], []
    for i, msg in enumerate(_as_list(m) for m in value):
        if not isinstance(msg, dict) or "role" not in msg:
            raise PreferenceImportError(f"{where}[{i}]: expected a {{role, content}} message, got {str(msg)[:80]!r}")
        text = content_text(msg.get("content"), rep, f"{where}[{i}].content")
        role = str(msg["role"]).lower()
        if role in ("user", "human"):
            users.append(text)
        elif role in ("assistant", "gpt", "model", "bot"):
            assistants.append(text)
        elif role == "system":
            rep["system_message_dropped"] += 1  # the Kaggle prompt holds user turns only
        else:
            raise PreferenceImportError(f"{where}[{i}].role: unknown role {msg['role']!r}")
    return users, assistants


def side_text(value: Any, rep: Counter, where: str) -> tuple[list[str], str]:
    """A response cell of the generic pairs: plain text, or a message list (its user turns are returned too)."""
    value = _as_list(value)
    if _missing(value):
        rep["null_response"] += 1
        return [], ""
    if isinstance(value, str):
        return [], at.fix_surrogates(value, rep)
    if isinstance(value, list) and all(isinstance(_as_list(m), dict) for m in value):
        users, assistants = conversation_turns(value, rep, where)
        return users, at.join_turns(assistants)
    if isinstance(value, list):
        return [], at.join_turns(content_text(v, rep, where) if not _missing(v) else "" for v in value)
    raise PreferenceImportError(f"{where}: expected text or a list of messages, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------------
# Ids and coin flips

def _hash_int(*parts: Any) -> int:
    return int(hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()[:16], 16)


def coin(seed: int, key: Any) -> bool:
    """A seeded coin flip for one row that does not depend on the other rows."""
    return _hash_int("coin", seed, key) % 2 == 1


def integer_ids(source_ids: list[str]) -> tuple[np.ndarray, bool]:
    """``(int64 ids, hashed?)``: decimal ids below ``ID_SPACE`` are kept, else every id is hashed."""
    try:
        ints = [int(s) for s in source_ids]
        if all(0 <= i < ID_SPACE and str(i) == str(s).strip() for i, s in zip(ints, source_ids)):
            return np.array(ints, dtype=np.int64), False
    except (TypeError, ValueError):
        pass
    taken: dict[int, str] = {}
    assigned: dict[str, int] = {}
    for s in sorted(set(source_ids)):
        h = _hash_int("id", s) % ID_SPACE
        while h in taken:  # resolved in sorted order: the same set of ids always gets the same integers
            h = (h + 1) % ID_SPACE
        taken[h] = s
        assigned[s] = h
    return np.array([assigned[s] for s in source_ids], dtype=np.int64), True


def write_id_map(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    out = df[["source_id", "id"]].drop_duplicates()
    return atomic_write_csv(path, out)


# --------------------------------------------------------------------------------------------------
# Per-format row converters: each yields dict(prompt_turns, a, b, label, source_id, models) or a drop reason

def _id_of(rec: dict, keys: tuple[str, ...], fallback: str) -> str:
    for k in keys:
        if k in rec and not _missing(rec[k]) and str(rec[k]).strip():
            return str(rec[k]).strip()
    return fallback


def _winner(rec: dict, where: str, need: bool, both_bad: str) -> int | str:
    """Label 0/1/2, -1 (unlabelled scoring input), or a drop reason."""
    value = rec.get("winner")
    if not need:
        return -1
    if _missing(value):
        raise PreferenceImportError(f"{where}, field 'winner': missing (expected one of {sorted(WINNERS)})")
    value = str(value).strip()
    if value not in WINNERS:
        raise PreferenceImportError(f"{where}, field 'winner': {value!r} is not one of {sorted(WINNERS)}")
    if value in BOTH_BAD and both_bad == "drop":
        return "both_bad"
    return WINNERS[value]


def _arena_row(rec: dict, where: str, rep: Counter, need: bool, both_bad: str, seed: int, index: int):
    sid = _id_of(rec, ("question_id", "id"), str(index + 1))
    ua, a = conversation_turns(rec.get("conversation_a"), rep, f"{where}, field 'conversation_a'")
    ub, b = conversation_turns(rec.get("conversation_b"), rep, f"{where}, field 'conversation_b'")
    if ua != ub and ub:
        rep["user_turns_differ"] += 1
    users = ua or ub
    label = _winner(rec, where, need, both_bad)
    if isinstance(label, str):
        return label
    if need and not users:
        return "no_user_turn"
    return dict(prompt=users or [""], a=at.join_turns(a), b=at.join_turns(b), label=label, source_id=sid)


def _kaggle_row(rec: dict, where: str, rep: Counter, need: bool, both_bad: str, seed: int, index: int):
    sid = _id_of(rec, ("id",), str(index + 1))
    cells = {}
    for col in at.TEXT_COLUMNS:
        value = _as_list(rec.get(col))
        if isinstance(value, list):
            cells[col] = ["" if _missing(t) else str(t) for t in value] or [""]
        else:
            cells[col] = at.parse_turns(value, file=where, row_id=sid, column=col, repairs=rep, bad_json="repair")
    label = -1
    if need:
        try:
            onehot = [float(rec[c]) for c in at.LABEL_COLUMNS]
        except (KeyError, TypeError, ValueError):
            raise PreferenceImportError(f"{where}, fields {list(at.LABEL_COLUMNS)}: missing or not numbers") from None
        if sorted(onehot) != [0.0, 0.0, 1.0]:
            raise PreferenceImportError(f"{where}, fields {list(at.LABEL_COLUMNS)}: not one-hot: {onehot}")
        label = int(np.argmax(onehot))
    return dict(prompt=cells["prompt"], a=at.join_turns(cells["response_a"]), b=at.join_turns(cells["response_b"]),
                label=label, source_id=sid)


def _pairs_row(rec: dict, where: str, rep: Counter, need: bool, both_bad: str, seed: int, index: int):
    sid = _id_of(rec, ("id", "question_id", "prompt_id"), str(index + 1))
    if "chosen" in rec or "rejected" in rec:
        uc, chosen = side_text(rec.get("chosen"), rep, f"{where}, field 'chosen'")
        ur, rejected = side_text(rec.get("rejected"), rep, f"{where}, field 'rejected'")
        prompt = rec.get("prompt")
        users = side_text(prompt, rep, f"{where}, field 'prompt'")[1] if not _missing(prompt) else None
        turns = [users] if users is not None else (uc or ur or [""])
        if chosen == rejected:
            if need:
                return "identical_responses"
            rep["identical_responses"] += 1
        # Scoring keeps A = chosen (the caller asked about this order); training flips a seeded coin.
        flip = need and coin(seed, sid)
        a, b = (rejected, chosen) if flip else (chosen, rejected)
        return dict(prompt=turns, a=a, b=b, label=(1 if flip else 0) if need else -1, source_id=sid)
    for col in ("prompt", "response_a", "response_b"):
        if col not in rec:
            raise PreferenceImportError(f"{where}: field '{col}' missing (pairs need prompt + chosen/rejected or "
                                        f"prompt + response_a/response_b; column_map= renames columns)")
    users, a = side_text(rec["response_a"], rep, f"{where}, field 'response_a'")
    _, b = side_text(rec["response_b"], rep, f"{where}, field 'response_b'")
    prompt = side_text(rec["prompt"], rep, f"{where}, field 'prompt'")[1]
    label = _winner(rec, where, need and "winner" in rec, both_bad) if need else -1
    if need and "winner" not in rec:
        raise PreferenceImportError(f"{where}, field 'winner': missing (training pairs need model_a/model_b/tie, "
                                    f"or give chosen/rejected)")
    if isinstance(label, str):
        return label
    return dict(prompt=[prompt], a=a, b=b, label=label, source_id=sid)


CONVERTERS = {"kaggle": _kaggle_row, "arena_conversations": _arena_row, "arena_55k": _arena_row,
              "pairs": _pairs_row}


def _ultrafeedback(records: list[dict], where: list[str], rep: Counter, report: ImportReport, seed: int,
                   ut_pairs: str, score_key: str) -> list[dict]:
    rows = []
    dropped: Counter = Counter()
    seen: set[str] = set()
    for index, (rec, w) in enumerate(zip(records, where)):
        prompt = rec.get("instruction", rec.get("prompt"))
        if _missing(prompt):
            raise PreferenceImportError(f"{report.file}: {w}, field 'instruction': missing")
        prompt = at.fix_surrogates(str(prompt), rep)
        completions = _as_list(rec.get("completions"))
        if not isinstance(completions, list):
            raise PreferenceImportError(f"{report.file}: {w}, field 'completions': expected a list of completions")
        sid = _id_of(rec, ("id", "prompt_id"), f"prompt-{_hash_int('p', prompt) % ID_SPACE}")
        if sid in seen:  # the seed kept one row per prompt id (drop_duplicates("id"))
            dropped["duplicate_prompt"] += 1
            continue
        seen.add(sid)
        rated = []
        for j, c in enumerate(_as_list(x) for x in completions):
            if not isinstance(c, dict) or "response" not in c:
                raise PreferenceImportError(f"{report.file}: {w}, field 'completions[{j}]': expected an object "
                                            f"with 'response'")
            try:
                score = float(c.get(score_key))
            except (TypeError, ValueError):
                rep["unrated_completion"] += 1  # UltraFeedback has "N/A" ratings: not comparable
                continue
            if math.isnan(score):
                rep["unrated_completion"] += 1
                continue
            rated.append((j, score, "" if _missing(c["response"]) else at.fix_surrogates(str(c["response"]), rep)))
        if len(rated) < 2:
            dropped["fewer_than_two_rated"] += 1
            continue
        pairs = [(x, y) for i, x in enumerate(rated) for y in rated[i + 1:]]
        if ut_pairs == "one":
            pairs = [pairs[_hash_int("pair", seed, sid) % len(pairs)]]
        for (ja, sa, ta), (jb, sb, tb) in pairs:
            key = sid if ut_pairs == "one" else f"{sid}#{ja}-{jb}"
            if coin(seed, key):
                (ja, sa, ta), (jb, sb, tb) = (jb, sb, tb), (ja, sa, ta)
            label = 2 if sa == sb else (0 if sa > sb else 1)
            rows.append(dict(prompt=[prompt], a=ta, b=tb, label=label, source_id=key))
        report.rows_out += 1
    report.dropped.update(dropped)
    report.pairs_out = len(rows)
    return rows


# --------------------------------------------------------------------------------------------------
# Entry point

def read_preferences(path: str | os.PathLike, *, format: str = "auto", need_labels: bool = True,
                     both_bad: Literal["tie", "drop"] = "tie", column_map: dict[str, str] | None = None,
                     seed: int = 2025, ut_pairs: Literal["one", "all"] = "one", bad_json: str = "repair",
                     encoding: str = "utf-8-sig", repairs: Counter | None = None,
                     duplicate_ids: Literal["error", "keep"] = "error") -> tuple[pd.DataFrame, ImportReport]:
    """Read one preference file in any supported format (module docstring) -> ``(frame, report)``."""
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if both_bad not in ("tie", "drop"):
        raise ValueError(f"both_bad must be 'tie' or 'drop', got {both_bad!r}")
    if ut_pairs not in ("one", "all"):
        raise ValueError(f"ut_pairs must be 'one' or 'all', got {ut_pairs!r}")
    rep = repairs if repairs is not None else Counter()
    suffix = _suffix(path)
    column_map = dict(column_map or {})
    score_key = column_map.pop("score", "overall_score")

    # The Kaggle CSV keeps its own reader (its errors and repairs are what stage 2 always reported).
    if suffix == ".csv" and format in ("auto", "kaggle", "arena_55k") and not column_map:
        cols = set(_csv_header(path, encoding) or [])  # unreadable: the Kaggle reader names the problem
        other = {"conversation_a", "conversation_b"} <= cols or {"chosen", "rejected"} <= cols or "completions" in cols
        if format == "kaggle" or not other:  # an Arena dump saved as CSV (JSON-string conversations): below
            kind = "train" if need_labels else "test"
            df = at.read_arena_csv(path, kind=kind, bad_json=bad_json, repairs=rep, encoding=encoding,
                                   duplicate_ids=duplicate_ids)
            report = ImportReport(str(path), "kaggle", rows_in=len(df), rows_out=len(df), pairs_out=len(df),
                                  repairs=dict(rep))
            df["source_id"] = df["id"].astype(str)
            if not need_labels:
                df["label"] = -1
            report.check()
            return df, report

    records, where = read_records(path)
    if column_map:
        missing = [src for src in column_map if src not in records[0]]
        if missing:
            raise PreferenceImportError(f"{path}: column_map names column(s) {missing} the file does not have "
                                        f"(has {sorted(records[0])})")
        records = [{column_map.get(k, k): v for k, v in r.items()} for r in records]
    fmt = detect_format(records[0].keys(), records[0], suffix) if format == "auto" else format
    report = ImportReport(str(path), fmt, rows_in=len(records))

    if fmt == "ultrafeedback":
        if not need_labels:
            raise PreferenceImportError(f"{path}: ultrafeedback rows (a prompt + rated completions) are training "
                                        f"data; to score responses give pairs (prompt, response_a, response_b)")
        rows = _ultrafeedback(records, where, rep, report, seed, ut_pairs, score_key)
    else:
        convert = CONVERTERS[fmt]
        rows, seen = [], {}
        dropped: Counter = Counter()
        for index, (rec, w) in enumerate(zip(records, where)):
            out = convert(rec, f"{path}: {w}", rep, need_labels, both_bad, seed, index)
            if isinstance(out, str):
                dropped[out] += 1
                continue
            if need_labels:  # training: the same battle twice is one battle
                content = (tuple(out["prompt"]), out["a"], out["b"], out["label"])
                sid = out["source_id"]
                if content in seen.get(sid, []):
                    dropped["duplicate_row"] += 1
                    continue
                if sid in seen:  # one id, another battle: both kept, the later one renamed (counted)
                    rep["duplicate_id_renamed"] += 1
                    out["source_id"] = f"{sid}#{len(seen[sid]) + 1}"
                seen.setdefault(sid, []).append(content)
            for m in ("model_a", "model_b"):
                if m in rec and not _missing(rec[m]):
                    out[m] = str(rec[m])
            rows.append(out)
        report.dropped.update(dropped)
        report.rows_out = report.pairs_out = len(rows)

    report.dropped = dict(report.dropped)
    source_ids = [r["source_id"] for r in rows]
    ids, hashed = integer_ids(source_ids)
    report.hashed_ids = hashed
    df = pd.DataFrame({
        "id": ids,
        "prompt": [at.join_turns(r["prompt"]) for r in rows],
        "response_a": [r["a"] for r in rows],
        "response_b": [r["b"] for r in rows],
        "n_turns": np.array([len(r["prompt"]) for r in rows], dtype=np.int32),
        "label": np.array([r["label"] for r in rows], dtype=np.int8),
        "source_id": source_ids,
    })
    for m in ("model_a", "model_b"):
        if any(m in r for r in rows):
            df[m] = [r.get(m) for r in rows]
    report.repairs = dict(rep)
    report.check()
    return df, report


def save_import_outputs(out_dir: str | os.PathLike, name: str, df: pd.DataFrame, report: ImportReport) -> None:
    """``<name>_id_map.csv`` (when the ids are not the file's own) and ``<name>_import.json`` next to an output."""
    out_dir = Path(out_dir)
    if report.hashed_ids or (df["id"].astype(str) != df["source_id"]).any():  # e.g. stage 2's extra-data ids
        write_id_map(out_dir / f"{name}_id_map.csv", df)
    atomic_write_json(out_dir / f"{name}_import.json", report.as_dict())
