"""arena_text: Kaggle cell parsing on every quirk, the template byte for byte, truncation bounds, swap, labels."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill import arena_text as at

FIXTURE = Path(__file__).parent / "fixtures" / "arena_messy.csv"


def _train_bpe(out_dir: Path, vocab_size: int = 600) -> Path:
    """A throwaway byte-level BPE (about a second) wrapped as a transformers fast tokenizer with eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ['User question:\n"""What is the answer?"""\nAnswer A:\n"""Yes."""\nAnswer B:\n"""No."""\n',
              "The quick brown fox jumps over the lazy dog. def f(x): return x * 2 # code",
              "Certainly, here is a clear and complete answer. 😀 🚀 日本語 中文 Привет мир مرحبا"] * 40
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>").save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def _bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_bpe(tmp_path_factory.mktemp("arena_bpe"))


@pytest.fixture(scope="module")
def bpe_tok(_bpe_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_bpe_tokenizer_dir))


# --------------------------------------------------------------------------------------------------
# Template

def test_template_byte_for_byte() -> None:
    expected = 'User question:\n"""P"""\nAnswer A:\n"""A"""\nAnswer B:\n"""B"""\n'
    assert at.build_text("P", "A", "B") == expected
    assert at.TEMPLATE.format(prompt="P", A="A", B="B") == expected
    assert at.build_text("", "", "").encode("utf-8") == (
        b'User question:\n""""""\nAnswer A:\n""""""\nAnswer B:\n""""""\n')
    # Braces in the text are content, not format fields.
    assert at.build_text("{A}", "{prompt}", "}") == 'User question:\n"""{A}"""\nAnswer A:\n"""{prompt}"""\nAnswer B:\n"""}"""\n'


# --------------------------------------------------------------------------------------------------
# Parsing

def test_parse_basic_and_join() -> None:
    turns = at.parse_turns('["What is AI?","Second turn"]')
    assert turns == ["What is AI?", "Second turn"]
    assert at.join_turns(turns) == "What is AI?\nSecond turn"
    assert at.join_turns(["a", None, "b"]) == "a\n\nb"


@pytest.mark.parametrize("cell, turns, kinds", [
    ("[null]", [""], {"null_turn": 1, "all_turns_null": 1}),
    ('["hi", null]', ["hi", ""], {"null_turn": 1}),
    ("[]", [""], {"empty_list": 1}),
    ("null", [""], {"null_cell": 1}),
    ('[""]', [""], {}),
    ('"just text"', ["just text"], {"non_list_json": 1}),
    ("[42, {\"a\": 1}]", ["42", '{"a": 1}'], {"non_string_turn": 2}),
    ('["null"]', ["null"], {}),
])
def test_parse_quirks_and_repairs(cell: str, turns: list[str], kinds: dict) -> None:
    rep: Counter = Counter()
    assert at.parse_turns(cell, repairs=rep) == turns
    assert dict(rep) == kinds


def test_surrogate_pair_escapes_become_one_emoji() -> None:
    cell = '["smile \\ud83d\\ude00 ok"]'  # the JSON text as Kaggle writes it
    rep: Counter = Counter()
    (text,) = at.parse_turns(cell, repairs=rep)
    assert text == "smile \U0001F600 ok" and not rep
    text.encode("utf-8")  # no lone surrogates: encodable


def test_lone_surrogate_repaired_and_counted() -> None:
    rep: Counter = Counter()
    (text,) = at.parse_turns('["half \\ud83d end"]', repairs=rep)
    assert text == "half \ufffd end" and rep == {"lone_surrogate": 1}
    text.encode("utf-8")
    # Two surrogate code points that form a pair (what eval() produces) are rejoined, not replaced.
    rep2: Counter = Counter()
    assert at.fix_surrogates("x\ud83d\ude00y", rep2) == "x\U0001F600y" and rep2 == {"split_surrogate_pair": 1}


def test_non_json_cell_error_names_file_row_column() -> None:
    with pytest.raises(at.ArenaParseError) as exc:
        at.parse_turns("['python', 'repr']", file="train.csv", row_id=1234, column="response_b")
    msg = str(exc.value)
    assert "train.csv" in msg and "1234" in msg and "response_b" in msg
    rep: Counter = Counter()
    assert at.parse_turns("not json", bad_json="repair", repairs=rep) == ["not json"]
    assert rep == {"non_json_cell": 1}


def test_messy_fixture_parses_every_row() -> None:
    rep: Counter = Counter()
    df = at.read_arena_csv(FIXTURE, kind="train", repairs=rep)
    raw = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    assert len(df) == len(raw) == 30 and df["id"].tolist() == raw["id"].astype(int).tolist()
    by_id = df.set_index("id")
    assert by_id.loc[441448, "prompt"] == "Give me emoji \U0001F600\U0001F44D\u2764\ufe0f"
    assert by_id.loc[480222, "response_a"] == "half an emoji: \ufffd end"
    assert by_id.loc[198779, "response_a"] == by_id.loc[198779, "response_b"] == ""
    assert by_id.loc[292873, "prompt"] == "hi\n"
    assert by_id.loc[1411020, "prompt"] == "NA" and by_id.loc[1411020, "response_b"] == "nan"
    assert by_id.loc[903311, "prompt"] == "null"
    assert by_id.loc[1317839, "n_turns"] == 32
    assert len(by_id.loc[711006, "response_a"]) > 20_000
    assert by_id.loc[520301, "prompt"].startswith("请用中文回答")
    assert by_id.loc[1205233, "response_a"] == "Unescaped UTF-8 \u00e9 \U0001F600"
    assert by_id.loc[1000459, "response_b"] == '"""'
    for col in at.TEXT_COLUMNS:  # nothing left that a tokenizer would refuse
        "".join(df[col]).encode("utf-8")
    assert rep["lone_surrogate"] == 1 and rep["all_turns_null"] == 3 and rep["empty_list"] == 1
    assert df["label"].tolist()[:3] == [0, 1, 2]


def test_read_csv_test_kind_and_column_errors(tmp_path: Path) -> None:
    raw = pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)
    test_csv = tmp_path / "test.csv"
    raw[["id", "prompt", "response_a", "response_b"]].to_csv(test_csv, index=False)
    df = at.read_arena_csv(test_csv, kind="test")
    assert len(df) == 30 and "label" not in df
    with pytest.raises(at.ArenaParseError, match=r"test\.csv.*missing column.*winner_model_a"):
        at.read_arena_csv(test_csv, kind="train")
    bad = tmp_path / "dup.csv"
    raw.assign(id=["7"] * len(raw)).to_csv(bad, index=False)
    with pytest.raises(at.ArenaParseError, match=r"dup\.csv: column 'id': duplicate id\(s\) \[7\]"):
        at.read_arena_csv(bad, kind="train")


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + FIXTURE.read_bytes())
    assert len(at.read_arena_csv(bom, kind="train")) == 30


@pytest.mark.parametrize("values, match", [
    ((1, 1, 0), r"id 5.*sums to 2"),
    ((0, 0, 0), r"id 5.*sums to 0"),
    (("", 1, 0), r"id 5, column 'winner_model_a'.*missing"),
    (("nan", 0, 1), r"id 5, column 'winner_model_a'.*missing"),
    ((2, 0, 0), r"id 5, column 'winner_model_a': label must be 0 or 1"),
])
def test_labels_from_onehot_errors(values: tuple, match: str) -> None:
    df = pd.DataFrame({"id": [4, 5], "winner_model_a": ["1", str(values[0])],
                       "winner_model_b": ["0", str(values[1])], "winner_tie": ["0", str(values[2])]})
    with pytest.raises(at.ArenaParseError, match=match):
        at.labels_from_onehot(df, file="train.csv")


def test_labels_and_swap() -> None:
    df = pd.DataFrame({"id": [1, 2, 3], "winner_model_a": [1, 0, 0], "winner_model_b": [0, 1, 0], "winner_tie": [0, 0, 1]})
    labels = at.labels_from_onehot(df, file="x")
    assert labels.tolist() == [0, 1, 2]
    assert at.swap_label(labels).tolist() == [1, 0, 2]
    assert [at.swap_label(x) for x in (0, 1, 2)] == [1, 0, 2]
    assert at.swap_label(at.swap_label(labels)).tolist() == labels.tolist()
    with pytest.raises(ValueError):
        at.swap_label(3)


# --------------------------------------------------------------------------------------------------
# Truncation

def test_truncate_words_keeps_spacing() -> None:
    text = "one  two\nthree\n\nfour five"
    assert at.truncate_words(text, 3, split="whitespace") == "one  two\nthree"
    assert at.truncate_words(text, 3, "left", split="whitespace") == "three\n\nfour five"
    assert at.truncate_words(text, 10, split="whitespace") == text and at.truncate_words(text, 0) == ""
    assert len(at.truncate_words(" ".join(["w"] * 1000), 700, split="whitespace").split()) == 700


def test_truncate_words_seed_split_is_the_seeds_expression() -> None:
    # The seed (src/prepare_data.py:75-77): ' '.join(text.split(' ')[:n]); a double space makes an empty
    # word and a newline separates nothing.
    texts = ["one  two\nthree\n\nfour five", "a b c d e", "", " lead", "x\ty z  ", "no-spaces-at-all"]
    for text in texts:
        for n in range(0, 7):
            assert at.truncate_words(text, n) == " ".join(text.split(" ")[:n]), (text, n)
            if n:
                assert at.truncate_words(text, n, "left") == " ".join(text.split(" ")[-n:]), (text, n)
    assert at.truncate_words("one  two\nthree\n\nfour five", 3) == "one  two\nthree\n\nfour"


def test_response_budgets_follow_the_seed_rule() -> None:
    for la in range(0, 30):
        for lb in range(0, 30):
            for budget in range(0, 62):
                ka, kb = at.response_budgets(la, lb, budget)
                assert 0 <= ka <= la and 0 <= kb <= lb and ka + kb <= max(budget, 0)
                if la + lb <= budget:
                    assert (ka, kb) == (la, lb)
                elif budget >= 2 * min(la, lb):  # only the longer one was trimmed
                    assert min(ka, kb) == min(la, lb) and ka + kb == budget
                else:  # both trimmed alternately: equal up to one token
                    assert abs(ka - kb) <= 1 and ka + kb == budget


def _rows(seed: int = 0, n: int = 60) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    words = "alpha beta gamma delta 😀 中文 code() x".split()

    def text() -> str:
        kind = rng.random()
        if kind < 0.1:
            return ""
        if kind < 0.15:
            return "z" * 30000  # one huge word
        n_words = rng.randint(1, 6) if kind < 0.6 else rng.randint(1, 900)
        return " ".join(rng.choice(words) for _ in range(n_words))

    return [text() for _ in range(n)], [text() for _ in range(n)], [text() for _ in range(n)]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [64, 256])
def test_encode_bounds(bpe_tok, side: str, max_length: int) -> None:
    p, a, b = _rows()
    enc = at.encode_batch_detailed(bpe_tok, p, a, b, max_length=max_length, prompt_max_tokens=40,
                                   truncation_side=side, prompt_cap="always")
    t_prompt, t_a, t_b, t_tail = at._template_ids(bpe_tok)
    for i, ids in enumerate(enc.input_ids):
        assert len(ids) <= max_length and ids[-1] == bpe_tok.eos_token_id and enc.lengths[i] == len(ids)
        kp, ka, kb = enc.kept[i]
        assert kp <= 40  # prompt cap
        assert (ka > 0) == (a[i] != "") and (kb > 0) == (b[i] != "")  # both answers present
        # ids are exactly template pieces around the kept parts
        assert ids[:len(t_prompt)] == t_prompt
        j = len(t_prompt) + kp
        assert ids[j:j + len(t_a)] == t_a
        j += len(t_a) + ka
        assert ids[j:j + len(t_b)] == t_b
        assert ids[-1 - len(t_tail):-1] == t_tail
    assert enc.token_truncated.any() and (~enc.token_truncated).any()


def test_encode_untruncated_decodes_to_template(bpe_tok) -> None:
    p, a, b = ["What is 2+2? 😀"], ['Four.\n```py\nprint("4")\n```'], [""]
    (ids,) = at.encode_batch(bpe_tok, p, a, b, max_length=256)
    assert bpe_tok.decode(ids) == at.build_text(p[0], a[0], b[0]) + bpe_tok.eos_token


def test_encode_truncation_sides(bpe_tok) -> None:
    resp = " ".join(f"w{i}" for i in range(400))
    right = at.encode_batch_detailed(bpe_tok, ["q"], [resp], ["short"], max_length=80)
    left = at.encode_batch_detailed(bpe_tok, ["q"], [resp], ["short"], max_length=80, truncation_side="left")
    r_text, l_text = bpe_tok.decode(right.input_ids[0]), bpe_tok.decode(left.input_ids[0])
    assert "w0 w1" in r_text and "w399" not in r_text
    assert "w399" in l_text and "w0 " not in l_text
    assert right.token_truncated[0] and right.kept[0][2] == len(bpe_tok("short", add_special_tokens=False)["input_ids"])
    # word caps (700 per response) apply first, on the chosen side
    long = " ".join(f"v{i}" for i in range(1000))
    enc = at.encode_batch_detailed(bpe_tok, ["q"], [long], [long], max_length=100_000, prompt_max_tokens=10_000)
    assert enc.text_truncated[0] and "v699" in bpe_tok.decode(enc.input_ids[0]) and "v700" not in bpe_tok.decode(enc.input_ids[0])


def test_encode_both_orientations_match_swapped_inputs(bpe_tok) -> None:
    p, a, b = _rows(seed=3, n=20)
    orig, swapped = at.encode_batch_both(bpe_tok, p, a, b, max_length=128)
    assert orig.input_ids == at.encode_batch(bpe_tok, p, a, b, max_length=128)
    assert swapped.input_ids == at.encode_batch(bpe_tok, p, b, a, max_length=128)


def test_encode_rejects_unusable_settings(bpe_tok) -> None:
    with pytest.raises(ValueError, match="max_length"):
        at.encode_batch(bpe_tok, ["p"], ["a"], ["b"], max_length=8)
    with pytest.raises(ValueError, match="lengths differ"):
        at.encode_batch(bpe_tok, ["p"], ["a"], [], max_length=64)
    assert at.encode_batch(bpe_tok, [], [], [], max_length=64) == []


def test_encode_family_tokenizers_on_messy_rows(tiny_model_dirs: dict[str, Path]) -> None:
    """The real consumers: Llama/Qwen2/Gemma2-style tokenizers, on every fixture row."""
    from transformers import AutoTokenizer

    df = at.read_arena_csv(FIXTURE, kind="train")
    for name, folder in tiny_model_dirs.items():
        tok = AutoTokenizer.from_pretrained(str(folder))
        enc = at.encode_batch_detailed(tok, df["prompt"].tolist(), df["response_a"].tolist(),
                                       df["response_b"].tolist(), max_length=256, prompt_max_tokens=64)
        assert max(map(len, enc.input_ids)) <= 256, name
        nonempty_a = (df["response_a"].str.len() > 0).to_numpy()
        assert (enc.kept[nonempty_a, 1] > 0).all(), name
        short = enc.lengths < 256
        i = int(np.flatnonzero(short & ~enc.token_truncated)[0])
        bos = tok.bos_token if at.bos_ids(tok) else ""
        assert tok.decode(enc.input_ids[i]) == bos + at.build_text(df["prompt"][i], df["response_a"][i],
                                                                    df["response_b"][i]) + tok.eos_token, name


def test_bos_follows_each_tokenizers_convention(tiny_model_dirs: dict[str, Path]) -> None:
    """Rows start with BOS exactly where tokenizer(text) adds one (Gemma-2, Llama-3; not Qwen2), and the
    BOS counts in max_length."""
    from transformers import AutoTokenizer

    df = at.read_arena_csv(FIXTURE, kind="train")
    expect = {"tiny_gemma2": "<bos>", "tiny_llama": "<|begin_of_text|>", "tiny_qwen2": None}
    for name, folder in tiny_model_dirs.items():
        tok = AutoTokenizer.from_pretrained(str(folder))
        bos = expect[name]
        assert at.bos_ids(tok) == ([tok.convert_tokens_to_ids(bos)] if bos else []), name
        for max_length in (64, 256):
            orig, swapped = at.encode_batch_both(tok, df["prompt"].tolist(), df["response_a"].tolist(),
                                                 df["response_b"].tolist(), max_length=max_length)
            for ids in orig.input_ids + swapped.input_ids:
                assert len(ids) <= max_length, name
                if bos:
                    assert ids[0] == tok.convert_tokens_to_ids(bos) and ids.count(ids[0]) >= 1, name
                else:
                    assert tok.bos_token_id is None or ids[0] != tok.bos_token_id, name
            assert any(n == max_length for n in orig.lengths), name  # the budget was reached, BOS included
        plain = at.encode_batch(tok, ["q"], ["a"], ["b"], max_length=64, bos="none")[0]
        with_bos = at.encode_batch(tok, ["q"], ["a"], ["b"], max_length=64)[0]
        assert with_bos == at.bos_ids(tok) + plain, name


def test_prompt_cap_applies_only_when_the_row_does_not_fit(bpe_tok) -> None:
    """The seed keeps a long prompt whole when prompt + answers fit max_length (src/prepare_data.py:81-84)."""
    prompt = " ".join(f"p{i}" for i in range(120))
    n_prompt = len(bpe_tok(prompt, add_special_tokens=False)["input_ids"])
    assert n_prompt > 40
    seed = at.encode_batch_detailed(bpe_tok, [prompt], ["short"], ["answer"], max_length=1024, prompt_max_tokens=40)
    always = at.encode_batch_detailed(bpe_tok, [prompt], ["short"], ["answer"], max_length=1024,
                                      prompt_max_tokens=40, prompt_cap="always")
    assert seed.kept[0][0] == n_prompt and not seed.token_truncated[0]
    assert always.kept[0][0] == 40 and always.token_truncated[0]
    long = " ".join(f"w{i}" for i in range(600))
    tight = at.encode_batch_detailed(bpe_tok, [prompt], [long], [long], max_length=300, prompt_max_tokens=40)
    assert tight.kept[0][0] == 40 and tight.lengths[0] == 300  # does not fit: capped as the seed


def test_parse_is_json_not_eval() -> None:
    # eval() would fail on null and split the emoji into two lone surrogates; json.loads does neither.
    cell = json.dumps(["a \U0001F600", None])
    assert at.parse_turns(cell) == ["a \U0001F600", ""]
