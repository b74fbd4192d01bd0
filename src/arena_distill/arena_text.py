"""Kaggle LMSYS row parsing, the seed's prompt template, truncation, A/B swap and batch encoding.

Used by the data stage (``src/02_prepare_data.py``) for training data and by prediction for
``test.csv``, so everything here must accept any row the real file can contain.

Parsing. A Kaggle text cell is a JSON-encoded list of turns: ``["What is ...?", "second turn"]``.
It is parsed with ``json.loads`` (never ``eval``: ``eval`` fails on ``null`` and turns escaped emoji
``\\ud83d\\ude00`` into two lone surrogates). Documented repairs, each counted in a ``Repairs``
counter that the data stage reports:

- ``null_turn``: a ``null`` turn becomes ``""``.
- ``all_turns_null``: a cell whose turns are all ``null`` (``[null]``); its turns are also counted.
- ``empty_list``: ``[]`` becomes ``[""]`` (one empty turn).
- ``null_cell``: a missing cell or the bare JSON value ``null`` becomes ``[""]``.
- ``non_list_json``: valid JSON that is not a list (``"text"``, ``42``) becomes one turn.
- ``non_string_turn``: a number / object / list turn becomes its JSON text.
- ``lone_surrogate``: a lone UTF-16 surrogate is replaced by U+FFFD.
- ``split_surrogate_pair``: two surrogate code points forming a pair are rejoined into one character.
- ``non_json_cell``: a cell that is not JSON at all is kept as one raw-text turn, only with
  ``bad_json="repair"``; with ``bad_json="error"`` it raises ``ArenaParseError``.

Template (the seed's, byte for byte), followed by one EOS token::

    User question:\\n\"\"\"{prompt}\"\"\"\\nAnswer A:\\n\"\"\"{A}\"\"\"\\nAnswer B:\\n\"\"\"{B}\"\"\"\\n

BOS (``bos="auto"``): the sequence starts with whatever the tokenizer's own convention puts before
the text (``tokenizer(text)`` vs ``add_special_tokens=False``, detected from the tokenizer, never from the
model name): ``<bos>`` for Gemma-2, ``<|begin_of_text|>`` for Llama-3, nothing for Qwen2. The seed
tokenizes whole strings with ``tokenizer(text)``, so its rows start with it; Gemma-2 without BOS is
badly off-distribution. The BOS counts in the ``max_length`` budget. ``bos="none"`` gives the old rows.

Truncation (the seed's, ``src/prepare_data.py`` lines 74-107): prompt to 256 words and each response
to 700 words, words being pieces of ``text.split(' ')`` (``word_split="seed"``; ``"whitespace"`` counts
``\S+`` runs instead, so newlines and tabs also separate words). Then, only when prompt + answers do
not fit (``prompt_cap="seed"``; ``"always"`` caps the prompt in every row), the prompt is cut to 256
tokens, the longer response trimmed from its end until both are equal, then both alternately, until
the whole text fits ``max_length``. Both responses always keep some text (the prompt gives way first).
``truncation_side="left"`` keeps the end of each part instead of the start.

Public API (one place for every stage that encodes arena rows: data, logits, evaluation, prediction,
GPTQ calibration, benchmarks): ``EncodeOptions`` (the option keys, ``.to_dict()`` to record them) and
``encode_rows(tokenizer, prompts, resp_a, resp_b, options, swaps=(False, True)) -> list[Encoded]``;
``encode_batch`` / ``encode_batch_detailed`` / ``encode_batch_both`` are keyword front-ends to it.
The seed's prediction script, reproduced exactly, lives in ``seed_encoding.py``.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from .io import StageInputError

# --------------------------------------------------------------------------------------------------
# Template: one place, tested byte for byte. The pieces are what encode_batch tokenizes once.

PROMPT_HEAD = 'User question:\n"""'
A_HEAD = '"""\nAnswer A:\n"""'
B_HEAD = '"""\nAnswer B:\n"""'
TAIL = '"""\n'
TEMPLATE = PROMPT_HEAD + "{prompt}" + A_HEAD + "{A}" + B_HEAD + "{B}" + TAIL

TURN_SEPARATOR = "\n"  # the seed joins the turns of one side with a newline

LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")  # label 0, 1, 2
TEXT_COLUMNS = ("prompt", "response_a", "response_b")
TRAIN_COLUMNS = ("id", *TEXT_COLUMNS, *LABEL_COLUMNS)
TEST_COLUMNS = ("id", *TEXT_COLUMNS)

Side = Literal["right", "left"]

# Default caps, as the seed.
PROMPT_MAX_WORDS = 256
RESPONSE_MAX_WORDS = 700
PROMPT_MAX_TOKENS = 256
# Tokens each non-empty response keeps at least (fewer if it is shorter): the prompt gives way first.
MIN_RESPONSE_TOKENS = 16
# Speed guard: before tokenizing, a part is cut to max_length * CHARS_PER_TOKEN_GUARD characters.
# A 30k-character word (a run of one character, base64) costs ~17 ms in a BPE tokenizer; the guard
# changes the result only when the kept tokens of a part average more than 16 characters each.
CHARS_PER_TOKEN_GUARD = 16


class ArenaParseError(StageInputError, ValueError):
    """A cell or row that cannot be used; the message names the file, the row id and the column."""


Repairs = Counter  # kind -> count; the data stage reports it


# --------------------------------------------------------------------------------------------------
# Parsing

_SURROGATE = re.compile("[\ud800-\udfff]")


def fix_surrogates(text: str, repairs: Repairs | None = None) -> str:
    """Rejoin split surrogate pairs and replace lone surrogates with U+FFFD (counted)."""
    if not _SURROGATE.search(text):
        return text
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if repairs is not None:
        n_lone = fixed.count("\ufffd") - text.count("\ufffd")
        repairs["lone_surrogate" if n_lone else "split_surrogate_pair"] += max(n_lone, 1)
    return fixed


def parse_turns(cell: Any, *, file: str = "<memory>", row_id: Any = "?", column: str = "?",
                repairs: Repairs | None = None, bad_json: Literal["error", "repair"] = "error") -> list[str]:
    """Parse one Kaggle text cell into its list of turns (strings), applying the documented repairs."""
    where = f"{file}: id {row_id}, column '{column}'"
    rep = repairs if repairs is not None else Counter()
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        rep["null_cell"] += 1
        return [""]
    if not isinstance(cell, str):
        raise ArenaParseError(f"{where}: expected a JSON text cell, got {type(cell).__name__} {cell!r:.80}")
    try:
        value = json.loads(cell)
    except json.JSONDecodeError as exc:
        if bad_json == "repair":
            rep["non_json_cell"] += 1
            return [fix_surrogates(cell, rep)]
        raise ArenaParseError(f"{where}: not a JSON list of turns ({exc.msg} at char {exc.pos}): "
                              f"{cell[:80]!r} (set bad_json=repair to keep it as raw text)") from None
    if value is None:
        rep["null_cell"] += 1
        return [""]
    if not isinstance(value, list):
        rep["non_list_json"] += 1
        value = [value]
    if not value:
        rep["empty_list"] += 1
        return [""]
    if all(t is None for t in value):
        rep["all_turns_null"] += 1
    turns = []
    for t in value:
        if t is None:
            rep["null_turn"] += 1
            turns.append("")
        elif isinstance(t, str):
            turns.append(fix_surrogates(t, rep))
        else:
            rep["non_string_turn"] += 1
            turns.append(fix_surrogates(json.dumps(t, ensure_ascii=False), rep))
    return turns


def join_turns(turns: Sequence[str | None]) -> str:
    """Join one side's turns as the seed does (newline); ``None`` turns count as empty strings."""
    return TURN_SEPARATOR.join("" if t is None else t for t in turns)


def parse_text(cell: Any, **kw: Any) -> str:
    """``parse_turns`` then ``join_turns``: the text of one side of a row."""
    return join_turns(parse_turns(cell, **kw))


def build_text(prompt: str, a: str, b: str) -> str:
    """The seed's template text (without the EOS token, which is a token, not text)."""
    return PROMPT_HEAD + prompt + A_HEAD + a + B_HEAD + b + TAIL


# --------------------------------------------------------------------------------------------------
# Labels and swap

def swap_label(label: int | np.ndarray) -> int | np.ndarray:
    """A/B swap: 0 (A wins) <-> 1 (B wins); 2 (tie) stays."""
    if isinstance(label, np.ndarray):
        out = label.copy()
        out[label == 0] = 1
        out[label == 1] = 0
        return out
    if label not in (0, 1, 2):
        raise ValueError(f"label must be 0, 1 or 2, got {label!r}")
    return {0: 1, 1: 0, 2: 2}[int(label)]


def labels_from_onehot(df: "Any", *, file: str) -> np.ndarray:
    """Kaggle's three 0/1 columns -> int label 0/1/2; error naming file, id and column on bad rows."""
    import pandas as pd

    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise ArenaParseError(f"{file}: missing label column(s) {missing} (have {list(df.columns)})")
    ids = df["id"].to_numpy() if "id" in df.columns else np.arange(len(df))
    mat = np.zeros((len(df), 3), dtype=np.float64)
    for j, col in enumerate(LABEL_COLUMNS):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ArenaParseError(f"{file}: id {ids[i]}, column '{col}': label is missing or not a number "
                                  f"({df[col].iloc[i]!r}); {int(bad.sum())} such row(s)")
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ArenaParseError(f"{file}: id {ids[i]}, column '{col}': label must be 0 or 1, got {values[i]!r}")
        mat[:, j] = values
    sums = mat.sum(axis=1)
    bad = sums != 1
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ArenaParseError(f"{file}: id {ids[i]}, columns {list(LABEL_COLUMNS)}: one-hot label sums to "
                              f"{sums[i]:g}, not 1; {int(bad.sum())} such row(s)")
    return mat.argmax(axis=1).astype(np.int8)


# --------------------------------------------------------------------------------------------------
# Reading a Kaggle-format CSV

def read_arena_csv(path: "Any", *, kind: Literal["train", "test"], bad_json: Literal["error", "repair"] = "error",
                   repairs: Repairs | None = None, encoding: str = "utf-8-sig",
                   duplicate_ids: Literal["error", "keep"] = "error") -> "Any":
    """Read and validate a Kaggle-format CSV; return a DataFrame with ``id`` (int64), parsed and joined
    ``prompt``/``response_a``/``response_b`` text, ``n_turns`` and, for ``kind="train"``, ``label``.

    Errors (``ArenaParseError``) name the file, the row id and the column: missing column, bad id,
    duplicate id (unless ``duplicate_ids="keep"``: the caller deduplicates, as the seed does for UT rows),
    non-JSON cell (unless ``bad_json="repair"``), bad one-hot label; and whole-file ones
    (``readers.FileFormatError``): empty, header only, bytes that are not ``encoding``, a cut-off file.
    """
    import pandas as pd

    from .readers import read_csv

    file = str(path)
    # Text as str and no NA guessing: a cell reading "null" or "NA" is text to parse, not a float NaN.
    # utf-8-sig: a byte-order mark (files saved by Excel) would otherwise rename the first column.
    # Whole-file problems (empty, header only, not UTF-8, cut off) are one-line errors too (readers.read_csv).
    df = read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding=encoding,
                  encoding_key="encoding", fix="re-download the file (or re-export it from the source as UTF-8 CSV)")
    need = TRAIN_COLUMNS if kind == "train" else TEST_COLUMNS
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ArenaParseError(f"{file}: missing column(s) {missing}; a {kind} file needs {list(need)} "
                              f"(has {list(df.columns)})")
    ids = pd.to_numeric(df["id"].str.strip(), errors="coerce")
    bad = ids.isna() | (ids != ids.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ArenaParseError(f"{file}: row {i + 2} (line of the CSV), column 'id': not an integer id: "
                              f"{df['id'].iloc[i]!r}")
    ids = ids.astype("int64")
    dup = ids.duplicated(keep=False)
    if dup.any() and duplicate_ids == "error":
        shown = sorted(set(ids[dup].tolist()))[:5]
        raise ArenaParseError(f"{file}: column 'id': duplicate id(s) {shown} ({int(dup.sum())} rows); "
                              f"ids must be unique")
    rep = repairs if repairs is not None else Counter()
    out = pd.DataFrame({"id": ids.to_numpy()})
    n_turns = np.zeros(len(df), dtype=np.int32)
    for col in TEXT_COLUMNS:
        texts = []
        for rid, cell in zip(out["id"].tolist(), df[col].tolist()):
            turns = parse_turns(cell, file=file, row_id=rid, column=col, repairs=rep, bad_json=bad_json)
            texts.append(join_turns(turns))
            if col == "prompt":
                n_turns[len(texts) - 1] = len(turns)
        out[col] = texts
    out["n_turns"] = n_turns
    if kind == "train":
        out["label"] = labels_from_onehot(df.assign(id=out["id"]), file=file)
    for col in ("model_a", "model_b"):
        if col in df.columns:
            out[col] = df[col].to_numpy()
    return out


# --------------------------------------------------------------------------------------------------
# Word truncation (keeps the original spacing and newlines: cuts at the end of the N-th word)

_WORD = re.compile(r"\S+")
WordSplit = Literal["seed", "whitespace"]


def truncate_words(text: str, max_words: int, side: Side = "right", split: WordSplit = "seed") -> str:
    """Keep the first (``right``) or last (``left``) ``max_words`` words.

    ``split="seed"``: words are the pieces of ``text.split(' ')``, exactly the seed's
    ``' '.join(text.split(' ')[:n])`` (a run of spaces makes empty words; a newline does not separate).
    ``split="whitespace"``: words are ``\S+`` runs and the original spacing is kept.
    """
    if max_words <= 0:
        return ""
    if split == "seed":
        pieces = text.split(" ")
        if len(pieces) <= max_words:
            return text
        return " ".join(pieces[:max_words] if side == "right" else pieces[-max_words:])
    if split != "whitespace":
        raise ValueError(f"word_split must be 'seed' or 'whitespace', got {split!r}")
    if side == "right":
        for i, m in enumerate(_WORD.finditer(text)):
            if i + 1 == max_words:
                return text[: m.end()]
        return text
    starts = [m.start() for m in _WORD.finditer(text)]
    if len(starts) <= max_words:
        return text
    return text[starts[-max_words]:]


# --------------------------------------------------------------------------------------------------
# Token-level encoding

@dataclass
class Encoded:
    """``encode_batch_detailed`` output: ids per row plus what truncation did (for the report)."""

    input_ids: list[list[int]]
    text_truncated: np.ndarray  # bool per row: some part lost text to the word caps (or the char guard)
    token_truncated: np.ndarray  # bool per row: some part lost tokens to the token budget
    n_tokens_raw: np.ndarray  # int per row: prompt + A + B tokens after word caps, before token cuts
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # len(input_ids)
    kept: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))  # tokens kept: prompt, A, B


def _template_ids(tokenizer: Any) -> tuple[list[int], list[int], list[int], list[int]]:
    enc = tokenizer([PROMPT_HEAD, A_HEAD, B_HEAD, TAIL], add_special_tokens=False)["input_ids"]
    return enc[0], enc[1], enc[2], enc[3]


def _cut_chars(text: str, n: int, side: Side) -> str:
    if len(text) <= n:
        return text
    return text[:n] if side == "right" else text[len(text) - n:]


def _cut(ids: list[int], n: int, side: Side) -> list[int]:
    if n >= len(ids):
        return ids
    if n <= 0:
        return []
    return ids[:n] if side == "right" else ids[len(ids) - n:]


def response_budgets(la: int, lb: int, budget: int) -> tuple[int, int]:
    """The seed's response trimming as closed form: trim the longer until both are equal, then both
    alternately (the longer one first), until ``la + lb <= budget``. Returns the kept lengths."""
    if la + lb <= budget:
        return la, lb
    short = min(la, lb)
    if budget >= 2 * short:
        keep_short, keep_long = short, budget - short
    else:
        # Alternating from the longer one: with an odd number of tokens to remove it loses one more.
        keep_long = max(budget, 0) // 2
        keep_short = max(budget, 0) - keep_long
    return (keep_long, keep_short) if la >= lb else (keep_short, keep_long)


PromptCap = Literal["seed", "always"]
BosMode = Literal["auto", "none"]


@dataclass(frozen=True)
class EncodeOptions:
    """Every setting that changes the token ids of an encoded row (record ``to_dict()`` with outputs)."""

    max_length: int = 1024  # tokens per row including BOS, template and EOS
    prompt_max_tokens: int = PROMPT_MAX_TOKENS
    prompt_max_words: int = PROMPT_MAX_WORDS
    response_max_words: int = RESPONSE_MAX_WORDS
    truncation_side: Side = "right"
    word_split: WordSplit = "seed"  # seed: text.split(' '); whitespace: \S+ runs
    prompt_cap: PromptCap = "seed"  # seed: cap the prompt only when the row does not fit; always: every row
    bos: BosMode = "auto"  # auto: the tokenizer's own convention (Gemma-2/Llama-3 yes, Qwen2 no); none: never
    min_response_tokens: int = MIN_RESPONSE_TOKENS

    def __post_init__(self) -> None:
        for key, allowed in (("truncation_side", ("right", "left")), ("word_split", ("seed", "whitespace")),
                             ("prompt_cap", ("seed", "always")), ("bos", ("auto", "none"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


OPTION_KEYS = tuple(EncodeOptions.__dataclass_fields__)


def bos_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer's own convention puts before the text (``[bos]`` for Gemma-2 / Llama-3,
    ``[]`` for Qwen2), found by comparing ``tokenizer(probe)`` with ``add_special_tokens=False``."""
    probe = "a"
    with_sp = list(tokenizer(probe)["input_ids"])
    without = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for k in range(len(with_sp) - len(without) + 1):
        if with_sp[k:k + len(without)] == without:
            return with_sp[:k]
    raise ValueError(f"cannot find the text ids {without} inside tokenizer('{probe}') = {with_sp}")


def encode_batch_detailed(tokenizer: Any, prompts: Sequence[str], resp_a: Sequence[str], resp_b: Sequence[str], *,
                          swap: bool = False, **options: Any) -> Encoded:
    """Encode rows as [BOS] + template + truncated parts + one EOS, ``len(ids) <= max_length`` guaranteed.

    ``options`` are ``EncodeOptions`` fields (``max_length`` required). The three parts of all rows are
    tokenized in three batched calls of a fast tokenizer (``add_special_tokens=False``); the template
    pieces are tokenized once and concatenated, so the text is never tokenized twice. Decoding the ids
    gives exactly ``bos + build_text(p', a', b') + eos`` for the truncated parts (for byte-level
    tokenizers). ``swap=True`` encodes the B/A orientation.
    """
    return encode_rows(tokenizer, prompts, resp_a, resp_b, EncodeOptions(**options), swaps=(swap,))[0]


def encode_batch_both(tokenizer: Any, prompts: Sequence[str], resp_a: Sequence[str], resp_b: Sequence[str],
                      **options: Any) -> tuple[Encoded, Encoded]:
    """(original, A/B-swapped) encodings from one tokenization of the parts (training and swap TTA)."""
    orig, swapped = encode_rows(tokenizer, prompts, resp_a, resp_b, EncodeOptions(**options), swaps=(False, True))
    return orig, swapped


def encode_rows(tokenizer: Any, prompts: Sequence[str], resp_a: Sequence[str], resp_b: Sequence[str],
                options: EncodeOptions, swaps: tuple[bool, ...] = (False, True)) -> list[Encoded]:
    """One ``Encoded`` per entry of ``swaps`` (False = A/B as given, True = swapped), from one tokenization."""
    o = options
    n = len(prompts)
    if not (len(resp_a) == len(resp_b) == n):
        raise ValueError(f"prompts/resp_a/resp_b lengths differ: {n}, {len(resp_a)}, {len(resp_b)}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id: the template ends with one EOS token")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("encode_batch needs a fast (Rust) tokenizer for batched encoding")
    bos = bos_ids(tokenizer) if o.bos == "auto" else []
    t_prompt, t_a, t_b, t_tail = _template_ids(tokenizer)
    fixed = len(bos) + len(t_prompt) + len(t_a) + len(t_b) + len(t_tail) + 1
    if o.max_length < fixed + 2:
        raise ValueError(f"max_length={o.max_length} leaves no room for text (BOS + template + EOS = {fixed} tokens)")

    side, split = o.truncation_side, o.word_split
    max_chars = max(o.max_length, o.prompt_max_tokens) * CHARS_PER_TOKEN_GUARD
    p_w = [_cut_chars(truncate_words(t, o.prompt_max_words, side, split), max_chars, side) for t in prompts]
    a_w = [_cut_chars(truncate_words(t, o.response_max_words, side, split), max_chars, side) for t in resp_a]
    b_w = [_cut_chars(truncate_words(t, o.response_max_words, side, split), max_chars, side) for t in resp_b]
    text_trunc = np.array([x != y or u != v or s != t for x, y, u, v, s, t
                           in zip(p_w, prompts, a_w, resp_a, b_w, resp_b)], dtype=bool)
    # Three batched calls: the Rust tokenizer parallelises over rows.
    p_ids = tokenizer(p_w, add_special_tokens=False, verbose=False)["input_ids"] if n else []
    a_ids = tokenizer(a_w, add_special_tokens=False, verbose=False)["input_ids"] if n else []
    b_ids = tokenizer(b_w, add_special_tokens=False, verbose=False)["input_ids"] if n else []
    raw = np.array([len(p) + len(a) + len(b) for p, a, b in zip(p_ids, a_ids, b_ids)], dtype=np.int64)

    room = o.max_length - fixed  # tokens for prompt + A + B
    results = []
    for swap in swaps:
        first, second = (b_ids, a_ids) if swap else (a_ids, b_ids)
        out: list[list[int]] = []
        tok_trunc = np.zeros(n, dtype=bool)
        kept = np.zeros((n, 3), dtype=np.int32)
        for i in range(n):
            p, a, b = p_ids[i], first[i], second[i]
            fits = len(p) + len(a) + len(b) <= room
            if not fits or o.prompt_cap == "always":
                # The prompt is capped and gives way so each response keeps min_response_tokens (or all of it).
                reserve = min(len(a), o.min_response_tokens) + min(len(b), o.min_response_tokens)
                lp = min(len(p), o.prompt_max_tokens, max(room - reserve, 0))
                la, lb = response_budgets(len(a), len(b), room - lp)
                if lp < len(p) or la < len(a) or lb < len(b):
                    tok_trunc[i] = True
                    p, a, b = _cut(p, lp, side), _cut(a, la, side), _cut(b, lb, side)
            kept[i] = (len(p), len(a), len(b))
            out.append(bos + t_prompt + p + t_a + a + t_b + b + t_tail + [eos])
        lengths = np.fromiter((len(x) for x in out), dtype=np.int32, count=n)
        results.append(Encoded(out, text_trunc, tok_trunc, raw, lengths, kept))
    return results


def encode_batch(tokenizer: Any, prompts: Sequence[str], resp_a: Sequence[str], resp_b: Sequence[str],
                 **options: Any) -> list[list[int]]:
    """Token ids per row ([BOS] + template + truncated parts + EOS); see ``encode_batch_detailed``."""
    return encode_batch_detailed(tokenizer, prompts, resp_a, resp_b, **options).input_ids


def percentiles(values: Iterable[float], qs: Sequence[int] = (50, 90, 95, 99, 100)) -> dict[str, float]:
    """Length percentiles for reports: ``{"p50": ..., "p100": ...}`` (empty input -> zeros)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": 0.0 for q in qs}
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}
