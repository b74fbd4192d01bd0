"""The seed's prediction encoding (shyoulala/LMSYS_BlackPearl ``src/predict_test.py`` lines 46-192), exactly.

Users arrive with the seed's published 8-bit model, trained on the seed's rows; ``predict_test.py
encoding=seed_exact`` feeds it the very token ids the seed's script would, row for row:

- Cell parsing (``do``, lines 46-52): ``"\\n".join(eval(x))`` with ``null`` bound to the text ``'nan'``;
  anything that raises becomes the cell with every ``[`` and ``]`` removed (no ``strip``). ``eval`` is
  never called here: the cell is parsed with ``ast.parse`` and evaluated by ``ast.literal_eval`` after the
  name ``null`` is replaced by the constant ``'nan'``. For every Python literal (all JSON arrays of
  strings/numbers/null, Python strings, tuples, dicts) this gives what ``eval`` gives; a cell that is an
  expression beyond literals (``"a" + "b"``, a call, another name) takes the fallback, where ``eval``
  might have computed something (no Arena cell is such an expression).
- Word caps on ``split(' ')`` (256 / 700 words), then only when prompt + answers exceed ``max_length``
  tokens (each counted with ``tokenizer.encode``, BOS included): the prompt cut to 256 tokens and decoded
  back to text, then, if still too long, the longer answer trimmed until equal and both alternately, both
  answers decoded back to text (``tokenizer.decode`` keeps special tokens, so a Gemma part starts with the
  text ``<bos>`` after this round trip, exactly as in the seed).
- The 4-space indented template of lines 60-68, tokenized whole with ``tokenizer(text)`` (BOS included),
  one EOS appended; TTA (lines 114-156): the same truncated parts with the answers swapped in the template.
- Pooling (line 287): the seed's classifier reads the token before the *first* pad (= EOS) id; a row whose
  text holds the EOS token text is scored through ``seed_pooling_view`` so the same token is read.

The one deviation: a lone UTF-16 surrogate (``"\\ud83d"`` escapes in a cell) cannot be passed to a Rust
tokenizer at all (the seed's script stops there with a TypeError); such text is repaired first
(``arena_text.fix_surrogates``) and counted.
"""
from __future__ import annotations

import ast
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from .arena_text import ArenaParseError, fix_surrogates

SEED_MAX_LENGTH = 2000  # src/predict_test.py:23
SEED_PROMPT_WORDS = 256
SEED_RESPONSE_WORDS = 700
SEED_PROMPT_TOKENS = 256


def seed_template(query: str, answer_a: str, answer_b: str) -> str:
    """``create_rounds`` of src/predict_test.py:60-68: its f-string keeps the source's 4-space indent."""
    return (f'User question:\n    """{query}"""\n    Answer A:\n    """{answer_a}"""\n'
            f'    Answer B:\n    """{answer_b}"""\n    ')


class _NullToNan(ast.NodeTransformer):
    """``null`` is the local variable ``null = 'nan'`` in the seed's ``do``; other names raise NameError."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "null":
            return ast.copy_location(ast.Constant("nan"), node)
        raise NameError(node.id)


def seed_parse_cell(cell: Any, *, strip_fallback: bool = False) -> str:
    """The seed's ``do(x)``: ``"\\n".join(eval(x))`` or, on any error, ``x`` without brackets.

    ``strip_fallback=True`` is the training-data variant (src/prepare_data.py:40-45 also ``strip()``s).
    A cell pandas read as missing (NaN) is an error here: the seed's ``x.replace`` fails on it too.
    """
    if not isinstance(cell, str):
        if cell is None or (isinstance(cell, float) and math.isnan(cell)):
            raise ArenaParseError("an empty/NA cell: the seed's script stops on it (float has no .replace)")
        raise ArenaParseError(f"a {type(cell).__name__} cell {cell!r:.60}: the seed's script stops on it")
    try:
        # eval() strips leading spaces and tabs of its source; ast.parse(mode="eval") does not.
        tree = ast.parse(cell.lstrip(" \t"), mode="eval")
        value = ast.literal_eval(_NullToNan().visit(tree))
        return "\n".join(value)
    except (SyntaxError, ValueError, TypeError, NameError, MemoryError, RecursionError, OverflowError):
        out = cell.replace("[", "").replace("]", "")
        return out.strip() if strip_fallback else out


def _cut(n: int, k: int) -> int:
    """``len(ids[:-1])`` for a list of length ``n``, applied ``k`` times (an empty list stays empty)."""
    return max(n - k, 0)


def seed_trim_answers(la: int, lb: int, remain: int) -> tuple[int, int]:
    """Lines 89-104 on lengths: the longer answer loses tokens until both are equal, then A and B alternately
    (A first, in both branches) until ``la + lb <= remain``."""
    if la > lb:
        while la + lb > remain and la > lb:
            la -= 1
    else:
        while la + lb > remain and lb > la:
            lb -= 1
    while la + lb > remain:
        if la == 0 and lb == 0:
            # The seed's loop never ends here (remain < 0: the prompt alone is longer than max_length).
            raise ValueError(f"prompt longer than max_length: the seed's loop would not end (remain={remain})")
        la = _cut(la, 1)
        if la + lb > remain:
            lb = _cut(lb, 1)
    return la, lb


@dataclass
class SeedEncoded:
    straight: list[list[int]]  # create_rounds(query, answer_a, answer_b)
    swapped: list[list[int]]  # create_rounds(query, answer_b, answer_a): the seed's TTA rows
    texts: list[str]  # the straight template texts
    repairs: Counter


def seed_encode(tokenizer: Any, prompt_cells: Sequence[Any], a_cells: Sequence[Any], b_cells: Sequence[Any], *,
                max_length: int = SEED_MAX_LENGTH, row_ids: Sequence[Any] | None = None) -> SeedEncoded:
    """The seed's token ids for raw Kaggle cells (as ``pd.read_csv`` gives them), both A/B orders.

    Tokenizer calls are batched (a fast tokenizer gives the same ids per string in a batch as alone).
    """
    n = len(prompt_cells)
    if not (len(a_cells) == len(b_cells) == n):
        raise ValueError(f"prompt/response_a/response_b lengths differ: {n}, {len(a_cells)}, {len(b_cells)}")
    ids_of = list(row_ids) if row_ids is not None else list(range(n))
    repairs: Counter = Counter()
    parts: list[list[str]] = []
    for col, cells in (("prompt", prompt_cells), ("response_a", a_cells), ("response_b", b_cells)):
        texts = []
        for rid, cell in zip(ids_of, cells):
            try:
                texts.append(fix_surrogates(seed_parse_cell(cell), repairs))
            except ArenaParseError as exc:
                raise ArenaParseError(f"id {rid}, column '{col}': {exc}") from None
        parts.append(texts)
    # Word caps, lines 74-76.
    query = [" ".join(t.split(" ")[:SEED_PROMPT_WORDS]) for t in parts[0]]
    ans_a = [" ".join(t.split(" ")[:SEED_RESPONSE_WORDS]) for t in parts[1]]
    ans_b = [" ".join(t.split(" ")[:SEED_RESPONSE_WORDS]) for t in parts[2]]

    def enc(texts: list[str]) -> list[list[int]]:  # tokenizer.encode(text): special tokens added
        return [list(x) for x in tokenizer(texts, verbose=False)["input_ids"]] if texts else []

    q_ids, a_ids, b_ids = enc(query), enc(ans_a), enc(ans_b)
    over = [i for i in range(n) if len(q_ids[i]) + len(a_ids[i]) + len(b_ids[i]) > max_length]
    # Lines 82-84: cut the prompt to 256 tokens (when it has 256 or more) and decode it back to text.
    for i in over:
        if len(q_ids[i]) >= SEED_PROMPT_TOKENS:
            query[i] = tokenizer.decode(q_ids[i][:SEED_PROMPT_TOKENS])
    requery = enc([query[i] for i in over])
    for j, i in enumerate(over):
        q_len = len(requery[j])
        if q_len + len(a_ids[i]) + len(b_ids[i]) > max_length:
            try:
                la, lb = seed_trim_answers(len(a_ids[i]), len(b_ids[i]), max_length - q_len)
            except ValueError as exc:
                raise ArenaParseError(f"id {ids_of[i]}: {exc}; max_length={max_length} is too small for the "
                                      f"seed's rule (its prompt alone takes {q_len} tokens; the seed uses "
                                      f"{SEED_MAX_LENGTH})") from None
            ans_a[i] = tokenizer.decode(a_ids[i][:la])
            ans_b[i] = tokenizer.decode(b_ids[i][:lb])
    straight_texts = [seed_template(q, a, b) for q, a, b in zip(query, ans_a, ans_b)]
    swapped_texts = [seed_template(q, b, a) for q, a, b in zip(query, ans_a, ans_b)]
    eos = tokenizer.eos_token_id
    straight = [ids + [eos] for ids in enc(straight_texts)]  # lines 188-191
    swapped = [ids + [eos] for ids in enc(swapped_texts)]
    return SeedEncoded(straight, swapped, straight_texts, repairs)


def seed_pooling_view(sequences: Sequence[Sequence[int]], eos_id: int) -> list[list[int]]:
    """Sequences cut after their first EOS, so that transformers' pooling (rightmost non-pad token, pad = EOS)
    reads the token the seed's own classifier reads: ``first pad position - 1`` (src/predict_test.py:287).
    The hidden state there depends only on earlier tokens (causal attention), so cutting changes nothing else;
    rows without an EOS inside their text (nearly all) are unchanged."""
    out = []
    for seq in sequences:
        seq = list(seq)
        out.append(seq[:seq.index(eos_id) + 1] if eos_id in seq else seq)
    return out


def read_seed_test_csv(path: Any) -> Any:
    """``pd.read_csv(test.csv)`` as the seed reads it (pandas' default NA handling included)."""
    from .readers import read_csv

    df = read_csv(path)
    missing = [c for c in ("id", "prompt", "response_a", "response_b") if c not in df.columns]
    if missing:
        raise ArenaParseError(f"{path}: missing column(s) {missing} (has {list(df.columns)})")
    return df
