"""Fidelity to the seed (shyoulala/LMSYS_BlackPearl) where tiny models cannot show the cost (docs/fidelity.md):
the pooled token, the seed-exact prediction encoding against a literal restatement of the seed's code, and
extra-data rules. The seed's shipped artefacts are tested in tests/test_seed_artifacts.py."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from arena_distill import arena_text as at
from arena_distill.arena_text import ArenaParseError
from arena_distill.batching import collate
from arena_distill.models import load_classifier, load_tokenizer
from arena_distill.sample_data import make_sample
from arena_distill.seed_encoding import seed_encode, seed_parse_cell

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "arena_messy.csv"
NAMES = ["tiny_gemma2", "tiny_llama", "tiny_qwen2"]


# --------------------------------------------------------------------------------------------------
# 2. The pooled token: pad = EOS, right padding -> the head reads the token before the final EOS

@pytest.mark.parametrize("name", NAMES)
def test_pooled_token_is_the_one_before_the_final_eos(tiny_model_dirs, name):
    folder = tiny_model_dirs[name]
    tok = load_tokenizer(folder)
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "right"
    model = load_classifier(folder, dtype=torch.float32, pad_token_id=tok.pad_token_id).eval()
    rows = at.encode_batch(tok, ["short?", "a longer prompt " * 5], ["yes", "answer " * 20], ["no", "other"],
                           max_length=256)
    ids, mask = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        pooled = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        per_token = model.score(hidden)
    for i, row in enumerate(rows):
        assert row[-1] == tok.eos_token_id
        before_eos = len(row) - 2  # the last template token, '"""\n'
        torch.testing.assert_close(pooled[i], per_token[i, before_eos], atol=1e-6, rtol=0)
        assert not torch.allclose(pooled[i], per_token[i, len(row) - 1], atol=1e-6)


def test_seed_pooling_view_reads_the_seeds_token(tiny_model_dirs):
    """The seed's classifier pools `first EOS - 1` (src/predict_test.py:287); a row whose text holds the EOS text
    is cut after its first EOS, and transformers' pooling then reads that same token."""
    from arena_distill.seed_encoding import seed_pooling_view

    folder = tiny_model_dirs["tiny_gemma2"]
    tok = load_tokenizer(folder)
    model = load_classifier(folder, dtype=torch.float32, pad_token_id=tok.pad_token_id).eval()
    enc = seed_encode(tok, ['["say <eos> please"]', '["plain"]'], ['["a"]', '["b"]'], ['["c"]', '["d"]'])
    full = enc.straight
    assert full[0].count(tok.eos_token_id) == 2 and full[1].count(tok.eos_token_id) == 1
    cut = seed_pooling_view(full, tok.eos_token_id)
    assert cut[1] == full[1] and cut[0] == full[0][:full[0].index(tok.eos_token_id) + 1]
    with torch.no_grad():
        for seq, view in zip(full, cut):
            per_token = model.score(model.model(input_ids=torch.tensor([seq])).last_hidden_state)[0]
            seed_pos = seq.index(tok.eos_token_id) - 1  # torch.eq(ids, pad).int().argmax(-1) - 1
            torch.testing.assert_close(model(input_ids=torch.tensor([view])).logits[0], per_token[seed_pos],
                                       atol=1e-5, rtol=0)


def test_load_tokenizer_own_pad_keeps_the_models_pad(tiny_model_dirs):
    tok = load_tokenizer(tiny_model_dirs["tiny_gemma2"], pad="own")
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    with pytest.raises(ValueError, match="pad"):
        load_tokenizer(tiny_model_dirs["tiny_gemma2"], pad="zero")


# --------------------------------------------------------------------------------------------------
# 5. Seed-exact prediction encoding vs a literal restatement of the seed's src/predict_test.py

def _seed_do(x):
    """The seed's ``do`` (predict_test.py:46-52) without eval: ``null`` -> 'nan', other names fail."""
    class Null(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id != "null":
                raise NameError(node.id)
            return ast.Constant("nan")
    try:
        return "\n".join(ast.literal_eval(Null().visit(ast.parse(x.lstrip(" \t"), mode="eval"))))
    except Exception:  # the seed's bare except (a NaN cell makes x.replace below raise, as in the seed)
        x = x.replace("[", "").replace("]", "")
        return x


def _seed_reference(tokenizer, test: pd.DataFrame, MAX_LENGTH: int) -> dict:
    """src/predict_test.py lines 55-192, restated line by line: {(id, reverse): input_ids}."""
    test = test.astype(object)  # the seed's pandas kept text in object columns (no Arrow string dtype)
    test['prompt'] = test['prompt'].apply(lambda x: _seed_do(x))
    test['response_a_str'] = test['response_a'].apply(lambda x: _seed_do(x))
    test['response_b_str'] = test['response_b'].apply(lambda x: _seed_do(x))

    def create_rounds(query, answer_a, answer_b):
        prompt = f"""User question:
    \"""{query}\"""
    Answer A:
    \"""{answer_a}\"""
    Answer B:
    \"""{answer_b}\"""
    """
        return prompt

    out = {}
    for reverse in (False, True):
        for _, row in test.iterrows():
            query = ' '.join(row['prompt'].split(' ')[:256])
            answer_a = ' '.join(row['response_a_str'].split(' ')[:700])
            answer_b = ' '.join(row['response_b_str'].split(' ')[:700])
            prompt_len = 256
            query_len = len(tokenizer.encode(query))
            answer_a_len = len(tokenizer.encode(answer_a))
            answer_b_len = len(tokenizer.encode(answer_b))
            if query_len + answer_a_len + answer_b_len > MAX_LENGTH:
                query = query if len(tokenizer.encode(query)) < prompt_len else tokenizer.decode(
                    tokenizer.encode(query)[:prompt_len])
                query_len = len(tokenizer.encode(query))
                if query_len + answer_a_len + answer_b_len > MAX_LENGTH:
                    remain_len = MAX_LENGTH - query_len
                    token_answer_a = tokenizer.encode(answer_a)
                    token_answer_b = tokenizer.encode(answer_b)
                    if len(token_answer_a) > len(token_answer_b):
                        while len(token_answer_a) + len(token_answer_b) > remain_len and len(token_answer_a) > len(
                                token_answer_b):
                            token_answer_a = token_answer_a[:-1]
                        while len(token_answer_a) + len(token_answer_b) > remain_len:
                            token_answer_a = token_answer_a[:-1]
                            if len(token_answer_a) + len(token_answer_b) > remain_len:
                                token_answer_b = token_answer_b[:-1]
                    else:
                        while len(token_answer_a) + len(token_answer_b) > remain_len and len(token_answer_b) > len(
                                token_answer_a):
                            token_answer_b = token_answer_b[:-1]
                        while len(token_answer_a) + len(token_answer_b) > remain_len:
                            token_answer_a = token_answer_a[:-1]
                            if len(token_answer_a) + len(token_answer_b) > remain_len:
                                token_answer_b = token_answer_b[:-1]
                    answer_a = tokenizer.decode(token_answer_a)
                    answer_b = tokenizer.decode(token_answer_b)
            prompt = create_rounds(query, answer_b, answer_a) if reverse else create_rounds(query, answer_a, answer_b)
            input_ids = tokenizer(prompt)['input_ids']
            input_ids.append(tokenizer.eos_token_id)
            out[(row['id'], reverse)] = input_ids
    return out


SEED_CELLS = {  # cell -> what the seed's do() returns (checked against real eval when this table was written)
    '["a", null]': "a\nnan", "[null]": "nan", "[]": "", '["x"] trailing': '"x" trailing', '"abc"': "a\nb\nc",
    "[1, 2]": "1, 2", "not a list": "not a list", '  ["lead"]': "lead", '["a"]\n': "a", '{"k": 1}': "k",
    '("t", "u")': "t\nu", "[true]": "true", '["a" "b"]': "ab", '["x", "y",]': "x\ny", "['single']": "single",
    '[["n"]]': '"n"', "": "", '["\\/"]': "\\/", '["a"]]': '"a"', "[None]": "None", '["a", None]': '"a", None',
}


def test_seed_cell_parsing_is_evals():
    for cell, expected in SEED_CELLS.items():
        assert seed_parse_cell(cell) == expected, cell
        assert _seed_do(cell) == expected, cell
    assert seed_parse_cell(' [x] ', strip_fallback=True) == "x"
    with pytest.raises(ArenaParseError, match="stops"):
        seed_parse_cell(float("nan"))


def test_seed_exact_too_small_max_length_is_a_named_error(tiny_model_dirs):
    """The seed's trimming loop never ends when the prompt alone exceeds max_length: ours stops, naming the row."""
    tok = load_tokenizer(tiny_model_dirs["tiny_gemma2"])
    long = json.dumps([" ".join(["word"] * 400)])
    with pytest.raises(ArenaParseError, match="id 77: .*too small"):
        seed_encode(tok, [long], [long], [long], max_length=40, row_ids=[77])


def _seed_frames() -> list[pd.DataFrame]:
    """The sample data's test rows, long rows that force every truncation branch, and the messy fixtures."""
    files, _ = make_sample(n_train=40, n_test=30, n_33k=0, n_ut=0, seed=4)
    rng = np.random.default_rng(0)
    words = np.array("alpha beta gamma delta code() x 😀 中文 <eos> <bos> the of".split())

    def text(n):
        return " ".join(rng.choice(words, n))
    def cell(*turns):
        return json.dumps(list(turns), ensure_ascii=False)
    long_rows = [(900000 + i, cell(text(int(rng.integers(1, 400)))), cell(text(int(rng.integers(1, 900)))),
                  cell(text(int(rng.integers(1, 900))), None)) for i in range(12)]
    long_rows.append((900100, cell(text(300)), cell(text(5)), cell(text(5))))  # long prompt, row fits
    messy = pd.read_csv(FIXTURE)
    return [files["test"][["id", "prompt", "response_a", "response_b"]],
            pd.DataFrame(long_rows, columns=["id", "prompt", "response_a", "response_b"]),
            messy[["id", "prompt", "response_a", "response_b"]]]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("max_length", [2000, 300])
def test_seed_exact_matches_the_seeds_code(tiny_model_dirs, name, max_length, tmp_path):
    tok = load_tokenizer(tiny_model_dirs[name])
    compared = 0
    for frame in _seed_frames():
        path = tmp_path / "t.csv"
        frame.to_csv(path, index=False)
        test = pd.read_csv(path)  # as the seed reads it
        usable = []
        for i, row in test.iterrows():
            cells = [row["prompt"], row["response_a"], row["response_b"]]
            if any(not isinstance(c, str) for c in cells):  # NA cell: the seed stops, so do we (named)
                with pytest.raises(ArenaParseError, match=f"id {row['id']}"):
                    seed_encode(tok, *[[c] for c in cells], max_length=max_length, row_ids=[row["id"]])
                continue
            try:
                _seed_reference(tok, test.loc[[i]], max_length)
            except (TypeError, UnicodeEncodeError):  # surrogates: the seed's tokenizer call fails; ours repairs
                enc = seed_encode(tok, *[[c] for c in cells], max_length=max_length)
                assert enc.repairs and all(ids[-1] == tok.eos_token_id for ids in enc.straight)
                continue
            usable.append(i)
        rows = test.loc[usable]
        ref = _seed_reference(tok, rows, max_length)
        ours = seed_encode(tok, rows["prompt"].tolist(), rows["response_a"].tolist(), rows["response_b"].tolist(),
                           max_length=max_length)
        for j, rid in enumerate(rows["id"]):
            assert ours.straight[j] == ref[(rid, False)], (name, rid)
            assert ours.swapped[j] == ref[(rid, True)], (name, rid)
            compared += 1
    assert compared > 50
    if at.bos_ids(tok):  # whole-string tokenization: BOS first
        assert ours.straight[0][0] == tok.bos_token_id


def test_predict_test_seed_exact_and_dump(tiny_model_dirs, tmp_path):
    """predict_test.py encoding=seed_exact scores exactly the seed's ids; dump_encodings writes them."""
    base = tiny_model_dirs["tiny_gemma2"]
    tok = load_tokenizer(base)
    model = load_classifier(base, dtype=torch.float32, pad_token_id=tok.pad_token_id)
    merged = tmp_path / "final_merged"
    model.save_pretrained(merged)
    tok.save_pretrained(merged)
    frame = _seed_frames()[1]
    frame.to_csv(tmp_path / "test.csv", index=False)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"common": {"data_dir": str(tmp_path), "save_dir": str(tmp_path)},
                                       "predict": {"max_length": 300, "batch_size": 4}}))
    spec = importlib.util.spec_from_file_location("predict_test_fid", REPO / "predict_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    for encoding in ("seed_exact", "ours"):
        dump = tmp_path / f"{encoding}.jsonl"
        mod.main(["--config", str(profile), f"test_csv={tmp_path / 'test.csv'}", "model_source=merged",
                  f"merged_dir={merged}", f"out={tmp_path / encoding}.csv", f"encoding_mode={encoding}",
                  f"dump_encodings={dump}"])
        rows = [json.loads(line) for line in dump.read_text().splitlines()]
        assert len(rows) == 2 * len(frame) and [r["swapped"] for r in rows] == [False] * len(frame) + [True] * len(frame)
        assert [r["id"] for r in rows[:len(frame)]] == frame["id"].tolist()
        if encoding == "seed_exact":
            ref = _seed_reference(tok, pd.read_csv(tmp_path / "test.csv"), 300)
            assert all(r["input_ids"] == ref[(r["id"], r["swapped"])] for r in rows)
        else:
            assert all(r["input_ids"][0] == tok.bos_token_id and len(r["input_ids"]) <= 300 for r in rows)


# --------------------------------------------------------------------------------------------------
# 7. Extra data as the seed: UT shuffled, repeated ids dropped, >= 1,200-word rows dropped; 33k whole

def _prepare(stage_module, root: Path, models_root: Path, files: dict, **prepare) -> dict:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, frame in files.items():
        frame.to_csv(data / f"{name}.csv", index=False)
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "common": {"seed": 5, "n_folds": 2, "data_dir": str(data), "processed_dir": str(root / "processed"),
                   "model_dir": str(models_root), "teachers": [], "student": "tiny_qwen2"},
        "prepare": {"folds_csv": str(root / "folds.csv"), "max_length": 4096, **prepare}}))
    assert stage_module("02_prepare_data").main(["--config", str(profile)]) == 0
    return json.loads((root / "processed" / "report.json").read_text())


def test_extra_data_as_the_seed(stage_module, tiny_models_root, tmp_path):
    files, _ = make_sample(n_train=40, n_test=2, n_33k=10, n_ut=12, seed=8)
    files = {"train": files["train"], "extra_33k": files["extra_33k"].copy(), "extra_ut": files["extra_ut"].copy()}
    files["extra_33k"].loc[0, "prompt"] = files["train"]["prompt"].iloc[0]  # a 33k row reusing a train prompt
    ut = files["extra_ut"]
    ut.loc[1, "id"] = ut.loc[0, "id"]  # a repeated id: dropped, not an error
    ut.loc[2, ["response_a", "response_b"]] = [json.dumps([" ".join(["w"] * 650)])] * 2  # 1,300+28 words
    ut.loc[3, ["response_a", "response_b"]] = [json.dumps([" ".join(["w"] * 500)])] * 2  # 1,000+28: kept
    report = _prepare(stage_module, tmp_path / "seed", tiny_models_root, files)
    assert report["rows_out"]["extra_used"]["33k"] == 10  # the whole file
    assert report["removed"] == {"ut_duplicate_id": 1, "ut_long_tiny_qwen2": 1}
    ut_out = pd.read_parquet(tmp_path / "seed" / "processed" / "tiny_qwen2_ut" / "train.parquet")
    assert len(ut_out) == 2 * (12 - 2)  # both orientations of the kept rows
    # Qwen2 adds no BOS: processed rows start with the template itself
    tok = load_tokenizer(tiny_models_root / "tiny_qwen2")
    head = tok(at.PROMPT_HEAD, add_special_tokens=False)["input_ids"]
    fold = pd.read_parquet(tmp_path / "seed" / "processed" / "tiny_qwen2fold0" / "train.parquet")
    assert at.bos_ids(tok) == [] and all(list(x[:len(head)]) == head for x in fold["input_ids"])
    report = _prepare(stage_module, tmp_path / "ours", tiny_models_root, files, extra_prompt_filter=True,
                      ut_max_words=0)
    dropped = report["removed"]["33k_prompt_in_train"]
    assert dropped >= 1 and report["rows_out"]["extra_used"]["33k"] == 10 - dropped
    assert "ut_long_tiny_qwen2" not in report["removed"]
