"""Deterministic LMSYS-format sample data with a known, learnable signal.

The real Kaggle files cannot be shipped, so the pipeline runs end to end on data in the exact Kaggle
schema (train: ``id, model_a, model_b, prompt, response_a, response_b, winner_model_a,
winner_model_b, winner_tie``; test: ``id, prompt, response_a, response_b``; text cells are
JSON-encoded lists of turns, written with ``ensure_ascii`` so emoji appear as surrogate-pair escapes).

Signal. Each response has visible features: its word count ``w`` (whitespace words of the joined
turns), the number of "quality marker" phrases ``g`` it opens with (0-3) and whether it opens with a
refusal ``r``. Its score is ``s = 0.3 log(1 + w) + 1.3 g - 2.2 r``; with ``d = s_a - s_b + 0.06``
(a slight position bias for A) the true class probabilities are the Davidson tie model
``softmax([d / 2, -d / 2, log 2.3])`` over (A wins, B wins, tie), and the label is drawn from them.
So equal-quality pairs (``d ~ 0``) are mostly ties (p_tie = 0.53), the longer answer wins about 61%
of decisive rows, and the best achievable log loss (mean ``-log p_true(label)``, reported) is about
0.86 against about 1.08 for the class prior. A latent per-response quality drives ``w``, ``g`` and
``r`` together (better answers are longer and more often carry markers), as in the real data; the
probabilities depend on the visible features only, so they are the Bayes-optimal prediction.

Quirks of the real file, each present (and counted in the report): multi-turn rows (up to dozens of
turns), ``null`` turns, both responses ``[null]``, empty strings, identical responses, escaped unicode
with emoji as surrogate pairs, non-English text, code blocks, responses over 20k characters, exact
duplicate rows (same content and labels, new id); lone surrogate escapes only on request (QUIRKS).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .arena_text import LABEL_COLUMNS

# --------------------------------------------------------------------------------------------------
# The truth model (see the module docstring); the report and tests read these constants.

BETA_LEN, BETA_GOOD, BETA_REFUSE = 0.3, 1.3, 2.2
POSITION_BIAS = 0.06  # added to d: A wins slightly more often, as in the real data
TIE_NU = 2.3  # Davidson tie weight: p_tie(d=0) = nu / (2 + nu)

GOOD_MARKERS = ["Certainly, here is a clear and complete answer.", "Let me explain step by step.",
                "Great question, here are the key points.", "To summarize the essentials first:"]
REFUSAL = "I'm sorry, but I can't help with that request."

MODELS = {  # name -> mean latent quality (the model shifts quality, the text carries the signal)
    "gpt-4-1106-preview": 0.6, "gpt-4-0613": 0.4, "claude-2.1": 0.3, "claude-instant-1": 0.1,
    "gpt-3.5-turbo-0613": 0.0, "mixtral-8x7b-instruct-v0.1": 0.1, "llama-2-70b-chat": -0.1,
    "vicuna-13b": -0.3, "koala-13b": -0.5, "chatglm-6b": -0.6, "oasst-pythia-12b": -0.7,
}

WORDS = ("the a of to and in is it that for on with as this be are by can you at from or an will "
         "model answer data system time people water energy light music history science market city "
         "language computer story question problem example value function process result method "
         "important different possible simple common general specific useful better first second "
         "because however therefore also often usually typically although while which where when "
         "explain describe consider compare provide include require improve create support allow "
         "learn build write read find make take give show help keep change move").split()
TOPICS = ["photosynthesis", "the French revolution", "neural networks", "black holes", "sourdough bread",
          "tax brackets", "the Pythagorean theorem", "climate change", "quantum computing", "chess openings",
          "the stock market", "volcanoes", "the Roman empire", "vaccines", "electric cars", "poetry"]
PROMPT_FORMS = ["What is {t}?", "Explain {t} to a child.", "Write a short poem about {t}.",
                "Give me three facts about {t}.", "How does {t} work?", "Compare {t} and {u}.",
                "Why do people care about {t}?", "Summarize the main ideas of {t} in two sentences."]
FOREIGN = {
    "zh": "我们 今天 学习 数据 模型 问题 答案 世界 时间 语言 城市 历史 科学 音乐".split(),
    "ru": "привет мир данные модель вопрос ответ время язык город история наука музыка".split(),
    "es": "hola mundo datos modelo pregunta respuesta tiempo lengua ciudad historia ciencia".split(),
    "ja": "こんにちは 世界 データ モデル 質問 答え 時間 言語 都市 歴史 科学 音楽".split(),
    "ar": "مرحبا عالم بيانات نموذج سؤال جواب وقت لغة مدينة تاريخ علم موسيقى".split(),
}
EMOJI = ["\U0001F600", "\U0001F680", "\U0001F44D", "\u2764\ufe0f", "\U0001F914", "\U0001F389", "\u2705"]
CODE = '```python\ndef solve(xs: list[int]) -> int:\n    """Sum of squares."""\n    return sum(x * x for x in xs)\n```'

# Per-row quirk probabilities (scaled by ``quirk_scale``). ``lone_surrogate`` (half an emoji escape,
# "\ud83d" alone) is off by default: tokenizers refuse such text, so it is a parser test case
# (tests/fixtures/arena_messy.csv), not something to feed every consumer of the sample files.
QUIRKS = {"multi_turn": 0.12, "many_turns": 0.01, "null_turn": 0.02, "both_null": 0.004, "empty_response": 0.01,
          "identical": 0.015, "emoji": 0.05, "non_english": 0.05, "code": 0.05, "very_long": 0.003,
          "lone_surrogate": 0.0, "duplicate_row": 0.005}


@dataclass
class Row:
    prompt: list[str | None]
    resp_a: list[str | None]
    resp_b: list[str | None]
    model_a: str
    model_b: str
    feats_a: tuple[int, int, int]  # (words, markers, refusal)
    feats_b: tuple[int, int, int]
    quirks: list[str]


# --------------------------------------------------------------------------------------------------
# Text pieces

def _sentence(rng: np.random.Generator, vocab: list[str]) -> str:
    n = int(rng.integers(6, 15))
    words = [vocab[i] for i in rng.integers(0, len(vocab), n)]
    return " ".join(words).capitalize() + "."


def _filler(rng: np.random.Generator, n_words: int, vocab: list[str]) -> str:
    """About ``n_words`` words of sentences, with paragraph breaks (real answers have newlines)."""
    parts, count = [], 0
    while count < n_words:
        s = _sentence(rng, vocab)
        parts.append(s)
        count += len(s.split())
        if rng.random() < 0.15:
            parts.append("\n\n")
    return " ".join(parts).replace(" \n\n ", "\n\n").strip()


def _prompt_turn(rng: np.random.Generator) -> str:
    t, u = rng.choice(TOPICS, 2, replace=False)
    ask = str(rng.choice(PROMPT_FORMS)).format(t=t, u=u)
    # Most real prompts are unique: a random context sentence makes chance collisions rare, so the
    # extra-data dedup removes (mostly) the deliberately reused prompts.
    return f"{_sentence(rng, WORDS)} {ask}" if rng.random() < 0.8 else ask


def truth_probs(feats_a: tuple[int, int, int], feats_b: tuple[int, int, int]) -> np.ndarray:
    """True (p_a, p_b, p_tie) from the visible features of both responses."""
    def score(f: tuple[int, int, int]) -> float:
        w, g, r = f
        return BETA_LEN * np.log1p(w) + BETA_GOOD * g - BETA_REFUSE * r

    d = score(feats_a) - score(feats_b) + POSITION_BIAS
    logits = np.array([d / 2, -d / 2, np.log(TIE_NU)])
    p = np.exp(logits - logits.max())
    return p / p.sum()


# --------------------------------------------------------------------------------------------------
# Row generation

class _Gen:
    def __init__(self, rng: np.random.Generator, quirk_scale: float) -> None:
        self.rng = rng
        self.q = {k: min(1.0, v * quirk_scale) for k, v in QUIRKS.items()}

    def has(self, kind: str) -> bool:
        return bool(self.rng.random() < self.q[kind])

    def response(self, quality: float, n_turns: int, *, vocab: list[str], emoji: bool, code: bool,
                 very_long: bool) -> tuple[list[str | None], tuple[int, int, int]]:
        rng = self.rng
        total = int(np.clip(np.round(np.exp(2.9 + 0.25 * quality + rng.normal(0, 0.7))), 1, 2000))
        if very_long:  # over 20k characters: ~4,000 words
            total = int(rng.integers(3800, 5000))
        refusal = int(rng.random() < 1 / (1 + np.exp(2.2 + 1.5 * quality)))
        good = 0 if refusal else int(min(3, rng.poisson(max(0.05, 0.6 + 0.8 * quality))))
        turns: list[str | None] = []
        for k in range(n_turns):
            body = _filler(rng, max(1, total // n_turns), vocab)
            if k == 0:  # markers open the answer, so they survive right truncation
                head = [REFUSAL] if refusal else [GOOD_MARKERS[i] for i in rng.permutation(4)[:good]]
                body = " ".join(head + [body])
            if code and k == 0:
                body = body + "\n\n" + CODE + "\n\n" + _sentence(rng, vocab)
            if emoji:
                body = body + " " + " ".join(rng.choice(EMOJI, int(rng.integers(1, 4))))
            turns.append(body)
        words = sum(len(t.split()) for t in turns if t)
        return turns, (words, good, refusal)

    def row(self) -> Row:
        rng, quirks = self.rng, []
        n_turns = 1
        if self.has("many_turns"):
            n_turns, quirks = int(rng.integers(15, 41)), ["many_turns"]
        elif self.has("multi_turn"):
            n_turns, quirks = int(rng.integers(2, 6)), ["multi_turn"]
        vocab = WORDS
        if self.has("non_english"):
            vocab = FOREIGN[str(rng.choice(list(FOREIGN)))]
            quirks.append("non_english")
        emoji, code, very_long = self.has("emoji"), self.has("code"), self.has("very_long")
        quirks += [k for k, on in (("emoji", emoji), ("code", code), ("very_long", very_long)) if on]
        prompt: list[str | None] = [_prompt_turn(rng) if vocab is WORDS else _sentence(rng, vocab)
                                    for _ in range(n_turns)]
        if emoji:
            prompt[0] = f"{prompt[0]} {rng.choice(EMOJI)}"
        model_a, model_b = (str(m) for m in rng.choice(list(MODELS), 2, replace=False))
        qa, qb = MODELS[model_a] + rng.normal(), MODELS[model_b] + rng.normal()
        long_side = int(rng.integers(0, 2))
        ra, fa = self.response(qa, n_turns, vocab=vocab, emoji=emoji, code=code, very_long=very_long and long_side == 0)
        rb, fb = self.response(qb, n_turns, vocab=vocab, emoji=emoji, code=code, very_long=very_long and long_side == 1)
        if self.has("identical"):
            rb, fb = list(ra), fa
            quirks.append("identical")
        if self.has("both_null"):
            ra, rb, fa, fb = [None], [None], (0, 0, 0), (0, 0, 0)
            quirks.append("both_null")
        elif self.has("empty_response"):
            if rng.random() < 0.5:
                ra, fa = [""] * n_turns, (0, 0, 0)
            else:
                rb, fb = [""] * n_turns, (0, 0, 0)
            quirks.append("empty_response")
        elif self.has("null_turn"):
            side = ra if rng.random() < 0.5 else rb
            k = int(rng.integers(0, len(side)))
            side[k] = None  # the features count words of the turns that remain
            if side is ra:
                fa = (sum(len(t.split()) for t in ra if t), fa[1] if k else 0, fa[2] if k else 0)
            else:
                fb = (sum(len(t.split()) for t in rb if t), fb[1] if k else 0, fb[2] if k else 0)
            if rng.random() < 0.2:  # real prompts occasionally carry a null turn too
                prompt.append(None)
            quirks.append("null_turn")
        if self.has("lone_surrogate"):
            prompt[0] = f"{prompt[0]} \ud83d"  # half an emoji: json.dumps writes "\ud83d" alone
            quirks.append("lone_surrogate")
        return Row(prompt, ra, rb, model_a, model_b, fa, fb, quirks)


def _cell(turns: list[str | None]) -> str:
    return json.dumps(turns, ensure_ascii=True)  # Kaggle's style: \uXXXX escapes, surrogate pairs


def _unique_ids(rng: np.random.Generator, n: int, exclude: set[int]) -> np.ndarray:
    """Kaggle-like ids: distinct random ints below 2**32, none in ``exclude``, ascending."""
    out: set[int] = set()
    while len(out) < n:
        for x in rng.integers(30_000, 2**32 - 1, 2 * (n - len(out)) + 8).tolist():
            if x not in exclude and len(out) < n:
                out.add(x)
    return np.array(sorted(out), dtype=np.int64)


def generate_split(n: int, seed: int, stream: int, *, quirk_scale: float = 1.0, exclude_ids: set[int] | None = None,
                   reuse_prompts: list[str] | None = None, reuse_rate: float = 0.0) -> tuple[pd.DataFrame, Counter]:
    """``n`` rows in the Kaggle train schema plus truth columns ``p_a, p_b, p_tie, label``.

    Each split draws from its own stream (``stream``), so changing one size leaves the others alone.
    ``reuse_prompts``: with probability ``reuse_rate`` a row takes one of these prompt cells verbatim
    (the extra data overlaps train prompts, so dedup has work to do).
    """
    rng = np.random.default_rng([seed, stream])
    gen = _Gen(rng, quirk_scale)
    records, quirk_counts = [], Counter()
    while len(records) < n:
        if records and gen.has("duplicate_row"):
            dup = dict(records[int(rng.integers(0, len(records)))])
            dup["quirks"] = "duplicate_row"
            records.append(dup)
            quirk_counts["duplicate_row"] += 1
            continue
        r = gen.row()
        p = truth_probs(r.feats_a, r.feats_b)
        label = int(rng.choice(3, p=p))
        prompt = _cell(r.prompt)
        if reuse_prompts and rng.random() < reuse_rate:
            prompt = reuse_prompts[int(rng.integers(0, len(reuse_prompts)))]
            r.quirks.append("train_prompt")
        quirk_counts.update(r.quirks)
        records.append({"model_a": r.model_a, "model_b": r.model_b, "prompt": prompt,
                        "response_a": _cell(r.resp_a), "response_b": _cell(r.resp_b),
                        **{c: int(label == j) for j, c in enumerate(LABEL_COLUMNS)},
                        "p_a": p[0], "p_b": p[1], "p_tie": p[2], "label": label, "quirks": ",".join(r.quirks),
                        "w_a": r.feats_a[0], "w_b": r.feats_b[0]})
    order = rng.permutation(n)  # duplicates land anywhere, not next to their original
    columns = ["model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS,
               "p_a", "p_b", "p_tie", "label", "quirks", "w_a", "w_b"]
    df = pd.DataFrame([records[i] for i in order], columns=columns)  # columns kept when n == 0
    df.insert(0, "id", _unique_ids(rng, n, exclude_ids or set()))
    return df, quirk_counts


# --------------------------------------------------------------------------------------------------
# Whole sample + report

def log_loss_stats(df: pd.DataFrame) -> dict[str, Any]:
    """Best achievable (true-probability) log loss, class-prior log loss and the bias statistics."""
    p = df[["p_a", "p_b", "p_tie"]].to_numpy()
    y = df["label"].to_numpy()
    best = float(-np.log(p[np.arange(len(y)), y]).mean())
    freq = np.bincount(y, minlength=3) / max(len(y), 1)
    prior = float(-np.log(np.clip(freq[y], 1e-15, None)).mean())
    decisive = y < 2
    longer = np.where(df["w_a"] > df["w_b"], 0, np.where(df["w_b"] > df["w_a"], 1, -1))
    m = decisive & (longer >= 0)
    equal = np.abs(np.log(p[:, 0] / p[:, 1])) < 0.3
    return {"rows": int(len(y)), "best_log_loss": round(best, 4), "prior_log_loss": round(prior, 4),
            "class_freq": {"a": round(float(freq[0]), 4), "b": round(float(freq[1]), 4), "tie": round(float(freq[2]), 4)},
            "longer_wins_decisive": round(float((longer[m] == y[m]).mean()), 4) if m.any() else None,
            "tie_rate_equal_quality": round(float((y[equal] == 2).mean()), 4) if equal.any() else None}


def make_sample(*, n_train: int, n_test: int, n_33k: int, n_ut: int, seed: int,
                quirk_scale: float = 1.0) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """All sample files as DataFrames (keys: train, test, sample_submission, truth, extra_33k, extra_ut)
    and the report dict."""
    train, q_train = generate_split(n_train, seed, 0, quirk_scale=quirk_scale)
    used = set(train["id"].tolist())
    test, q_test = generate_split(n_test, seed, 1, quirk_scale=quirk_scale, exclude_ids=used)
    used |= set(test["id"].tolist())
    prompts = train["prompt"].tolist()
    x33k, q_33k = generate_split(n_33k, seed, 2, quirk_scale=quirk_scale, exclude_ids=used,
                                 reuse_prompts=prompts, reuse_rate=0.1)
    used |= set(x33k["id"].tolist())
    xut, q_ut = generate_split(n_ut, seed, 3, quirk_scale=quirk_scale, exclude_ids=used,
                               reuse_prompts=prompts, reuse_rate=0.1)
    kaggle = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS]
    truth = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    files = {
        "train": train[kaggle],
        "test": test[["id", "prompt", "response_a", "response_b"]],
        "sample_submission": pd.DataFrame({"id": test["id"], "winner_model_a": 1 / 3, "winner_model_b": 1 / 3,
                                           "winner_tie": 1 / 3}),
        "truth": truth[["id", "split", "p_a", "p_b", "p_tie", "label"]],
        "extra_33k": x33k[kaggle],
        "extra_ut": xut[kaggle],
    }
    resp_chars = pd.concat([train["response_a"], train["response_b"]]).str.len()
    report = {"seed": seed, "sizes": {k: len(v) for k, v in files.items()},
              "train": log_loss_stats(train), "test": log_loss_stats(test),
              "quirks": {"train": dict(q_train), "test": dict(q_test), "extra_33k": dict(q_33k), "extra_ut": dict(q_ut)},
              "max_response_chars_train": int(resp_chars.max()),
              "truth_model": {"beta_len": BETA_LEN, "beta_good": BETA_GOOD, "beta_refuse": BETA_REFUSE,
                              "position_bias": POSITION_BIAS, "tie_nu": TIE_NU}}
    return files, report
