"""The judge API (arena_distill.judge) and the scoring CLI (src/score_pairs.py) on tiny classifier folders:
exactly the recorded encoding, TTA symmetry, order independence, merged == base + adapter, every input row out
once with probabilities summing to 1 for each public format, and stage 8 writing the encoding record."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from arena_distill import arena_text as at
from arena_distill import encoding_record as er
from arena_distill.judge import Judge
from arena_distill.metrics import softmax
from arena_distill.models import add_lora, load_classifier, load_tokenizer

FIX = Path(__file__).parent / "fixtures" / "imports"
KAGGLE = Path(__file__).parent / "fixtures" / "arena_messy.csv"
ENCODING = {"max_length": 96, "prompt_max_tokens": 24, "prompt_max_words": 256, "response_max_words": 700,
            "truncation_side": "right", "word_split": "seed", "prompt_cap": "seed", "bos": "auto"}
PROMPTS = ["What is 2+2?", ["First turn", "second turn"], "Tell me a long story. " * 30]
A = ["4", ["yes", "and more"], "Once upon a time " * 50]
B = ["five", ["no", None], "The end."]


def _random_head(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g))


@pytest.fixture(scope="module")
def folders(tiny_model_dirs, tmp_path_factory) -> dict[str, Path]:
    """A merged classifier folder and a base + adapter folder holding the same model (LoRA B = 0)."""
    root = tmp_path_factory.mktemp("judge")
    base = tiny_model_dirs["tiny_llama"]
    tok = load_tokenizer(base)
    model = load_classifier(base, num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id)
    peft = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "modules_to_save" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    adapter = root / "adapter"
    peft.save_pretrained(adapter)
    (adapter / "config.yaml").write_text(yaml.safe_dump({"stage": "DistillConfig", "base_model": str(base)}))
    er.write_record(adapter, er.make_record(ENCODING))
    merged = root / "merged"
    full = peft.merge_and_unload()
    full.save_pretrained(merged)
    tok.save_pretrained(merged)
    er.write_record(merged, er.make_record(ENCODING))
    return {"merged": merged, "adapter": adapter, "base": base}


@pytest.fixture(scope="module")
def judge(folders) -> Judge:
    return Judge(folders["merged"], device="cpu", batch_size=2, progress=False)


def test_predict_is_the_recorded_encoding_scored_with_tta(judge, folders) -> None:
    probs = judge.predict(PROMPTS, A, B)
    assert probs.shape == (3, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    # By hand: the seed's template at the recorded caps, both orders, swapped columns mapped back.
    tok = load_tokenizer(folders["merged"])
    texts = [at.join_turns(x) if isinstance(x, list) else x for x in PROMPTS]
    ta = [at.join_turns(x) if isinstance(x, list) else x for x in A]
    tb = [at.join_turns(x) if isinstance(x, list) else x for x in B]
    straight, swapped = at.encode_batch_both(tok, texts, ta, tb, **ENCODING)
    assert max(len(s) for s in straight.input_ids) <= 96
    model = load_classifier(folders["merged"], num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id)
    model.eval()
    with torch.inference_mode():
        one = lambda ids: softmax(model(input_ids=torch.tensor([ids])).logits.detach().double().numpy())[0]  # noqa: E731
        want = np.stack([(one(s) + one(w)[[1, 0, 2]]) / 2 for s, w in zip(straight.input_ids, swapped.input_ids)])
    np.testing.assert_allclose(probs, want, atol=1e-5)
    no_tta = judge.predict(PROMPTS, A, B, tta=False)
    np.testing.assert_allclose(no_tta, np.stack([one(s) for s in straight.input_ids]), atol=1e-5)


def test_tta_is_symmetric_and_order_free(judge) -> None:
    p_ab = judge.predict(PROMPTS, A, B)
    p_ba = judge.predict(PROMPTS, B, A)
    np.testing.assert_allclose(p_ab[:, [1, 0, 2]], p_ba, atol=1e-6)
    order = [2, 0, 1]
    permuted = judge.predict([PROMPTS[i] for i in order], [A[i] for i in order], [B[i] for i in order])
    np.testing.assert_allclose(permuted, p_ab[order], atol=1e-6)
    assert judge.predict([], [], []).shape == (0, 3)
    with pytest.raises(ValueError, match="differ in length"):
        judge.predict(PROMPTS, A, B[:2])


def test_adapter_folder_gives_the_merged_predictions(judge, folders) -> None:
    via_adapter = Judge(folders["adapter"], device="cpu", progress=False)
    assert via_adapter.kind == "adapter" and judge.kind == "merged"
    np.testing.assert_allclose(via_adapter.predict(PROMPTS, A, B), judge.predict(PROMPTS, A, B), atol=1e-5)


def test_encoding_record_is_required_and_used(folders, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(folders["merged"], bare)
    (bare / er.RECORD_FILE).unlink()
    with pytest.raises(er.EncodingRecordError, match="no encoding.json"):
        Judge(bare, device="cpu")
    short = Judge(bare, device="cpu", encoding={**ENCODING, "max_length": 56}, progress=False)
    full = Judge(bare, device="cpu", encoding=ENCODING, progress=False)
    assert not np.allclose(short.predict(PROMPTS, A, B), full.predict(PROMPTS, A, B))  # the record matters
    er.write_record(bare, er.make_record({**ENCODING, "future_option": True}))
    bad = json.loads((bare / er.RECORD_FILE).read_text())
    bad["encoding"]["future_option"] = True
    (bare / er.RECORD_FILE).write_text(json.dumps(bad))
    with pytest.raises(er.EncodingRecordError, match=r"\['future_option'\].*does not accept"):
        Judge(bare, device="cpu")


def test_adapter_without_record_is_traced_to_its_processed_data(folders, tmp_path) -> None:
    adapter = tmp_path / "tiny_llamafold0"
    shutil.copytree(folders["adapter"], adapter)
    (adapter / er.RECORD_FILE).unlink()
    processed = tmp_path / "processed" / "tiny_llamafold1"
    processed.mkdir(parents=True)
    (processed / er.FINGERPRINT_FILE).write_text(json.dumps({**ENCODING, "seed": 5, "n_folds": 5}))
    (adapter / "config.yaml").write_text(yaml.safe_dump({
        "stage": "DistillConfig", "base_model": str(folders["base"]),
        "config": {"student": "tiny_llama", "fold": 1, "processed_dir": str(tmp_path / "processed")}}))
    record = er.read_record(adapter)
    assert record["encoding"] == ENCODING and record["source"] == [str(processed)]


def test_folder_from_before_the_seed_rules_is_judged_as_it_was_trained(tmp_path) -> None:
    """Stage-2 data written before word_split/prompt_cap/bos existed were encoded the old way (no BOS, \\S+
    word caps, prompt always capped): the traced record says so instead of assuming today's defaults."""
    old = {k: ENCODING[k] for k in ("max_length", "prompt_max_tokens", "prompt_max_words", "response_max_words",
                                    "truncation_side")}
    processed = tmp_path / "processed" / "tiny_llamafold0"
    processed.mkdir(parents=True)
    (processed / er.FINGERPRINT_FILE).write_text(json.dumps({**old, "seed": 5}))
    record = er.from_processed(tmp_path / "processed", ["tiny_llamafold0"])
    assert record["encoding"] == {**old, "word_split": "whitespace", "prompt_cap": "always", "bos": "none"}


# --------------------------------------------------------------------------------------------------
# scoring CLI

def _score(stage_module, argv: list[str]) -> dict:
    return stage_module("score_pairs").main(argv)


@pytest.mark.parametrize("name, n_rows", [("chatbot_arena_conversations.jsonl", 5),
                                          ("arena_human_preference_140k.jsonl", 4),
                                          ("arena_human_preference_100k.jsonl", 2), ("pairs.jsonl", 4)])
def test_cli_scores_every_row_once(stage_module, folders, tmp_path, name, n_rows) -> None:
    out = tmp_path / "scores.jsonl"
    summary = _score(stage_module, [f"input={FIX / name}", f"output={out}", f"model={folders['merged']}",
                                    "device=cpu", "batch_size=2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    src = [json.loads(line) for line in (FIX / name).read_text().splitlines()]
    assert summary["rows"] == len(rows) == n_rows
    assert [r["row"] for r in rows] == list(range(1, n_rows + 1))
    want_ids = [s.get("question_id", s.get("id")) for s in src]
    assert [r["id"] for r in rows] == want_ids
    probs = np.array([[r["winner_model_a"], r["winner_model_b"], r["winner_tie"]] for r in rows])
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_cli_parquet_and_kaggle_csv_in_csv_out(stage_module, folders, tmp_path) -> None:
    records = [json.loads(line) for line in (FIX / "arena_human_preference_140k.jsonl").read_text().splitlines()]
    pd.DataFrame(records).to_parquet(tmp_path / "battles.parquet", index=False)
    out = tmp_path / "s.csv"
    _score(stage_module, [f"input={tmp_path / 'battles.parquet'}", f"output={out}", f"model={folders['adapter']}",
                          "device=cpu", "tta=false"])
    got = pd.read_csv(out)
    assert got["id"].tolist() == [r["id"] for r in records]
    np.testing.assert_allclose(got[["winner_model_a", "winner_model_b", "winner_tie"]].sum(axis=1), 1.0, atol=1e-6)
    battles33k = [json.loads(line) for line in (FIX / "chatbot_arena_conversations.jsonl").read_text().splitlines()]
    pd.DataFrame(battles33k).to_parquet(tmp_path / "train-00000-of-00001.parquet", index=False)  # the HF layout
    out33 = tmp_path / "s33.jsonl"
    _score(stage_module, [f"input={tmp_path / 'train-00000-of-00001.parquet'}", f"output={out33}",
                          f"model={folders['merged']}", "device=cpu"])
    assert [json.loads(line)["id"] for line in out33.read_text().splitlines()] == [r["question_id"] for r in battles33k]
    kaggle_out = tmp_path / "k.jsonl"
    _score(stage_module, [f"input={KAGGLE}", f"output={kaggle_out}", f"model={folders['merged']}", "device=cpu"])
    rows = [json.loads(line) for line in kaggle_out.read_text().splitlines()]
    assert [r["id"] for r in rows] == pd.read_csv(KAGGLE)["id"].tolist()  # integer ids stay integers


def test_cli_refuses_bad_options_without_writing(stage_module, folders, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        _score(stage_module, [f"input={FIX / 'pairs.jsonl'}", f"output={tmp_path / 'x.txt'}",
                              f"model={folders['merged']}"])
    assert exc.value.code == 2 and not (tmp_path / "x.txt").exists()
    with pytest.raises(Exception, match="training data"):
        _score(stage_module, [f"input={FIX / 'ultrafeedback.jsonl'}", f"output={tmp_path / 'u.jsonl'}",
                              f"model={folders['merged']}", "format=auto"])
    assert not (tmp_path / "u.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# stage 8 writes the record (and the judge can read the merged folder it writes)

def test_stage8_writes_the_folds_encoding(stage_module, tiny_model_dirs, tmp_path) -> None:
    from test_average_merge import make_fold_adapters

    base = tiny_model_dirs["tiny_llama"]
    make_fold_adapters(base, tmp_path / "save", tmp_path / "processed", 2, "tiny_llama", n_dev=4)
    for k in range(2):
        (tmp_path / "processed" / f"tiny_llamafold{k}" / er.FINGERPRINT_FILE).write_text(json.dumps(
            {**ENCODING, "seed": 5, "bad_json": "repair"}))
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({
        "common": {"seed": 1, "n_folds": 2, "student": "tiny_llama", "save_dir": str(tmp_path / "save"),
                   "processed_dir": str(tmp_path / "processed"), "model_dir": str(base.parent)},
        "average": {"eval_batch": 4, "compare": False}}))
    stage_module("08_average_merge").main(["--config", str(profile)])
    for folder in ("final_merged", "tiny_llama_avg"):
        record = json.loads((tmp_path / "save" / folder / er.RECORD_FILE).read_text())
        assert record["encoding"] == ENCODING and record["template"] == at.TEMPLATE
    probs = Judge(tmp_path / "save" / "final_merged", device="cpu", progress=False).predict(PROMPTS, A, B)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert er.copy_record(tmp_path / "save" / "final_merged", tmp_path / "gptq") == tmp_path / "gptq" / er.RECORD_FILE


@pytest.mark.slow
def test_gptq_folder(folders, tmp_path) -> None:
    """A GPTQ folder (stage 9's route) is judged like the merged model it came from."""
    from arena_distill import quant

    tok = load_tokenizer(folders["merged"])
    calibration = at.encode_batch(tok, ["q"] * 8, ["a " * 20] * 8, ["b " * 10] * 8, max_length=64)
    quant.quantize_classifier(folders["merged"], tmp_path / "gptq", calibration, tok, bits=8, group_size=32,
                              max_length=64, desc_act=False, sym=True, damp_percent=0.1, dtype=torch.float32)
    er.copy_record(folders["merged"], tmp_path / "gptq")
    judged = Judge(tmp_path / "gptq", device="cpu", progress=False)
    assert judged.kind == "gptq"
    fp = Judge(folders["merged"], device="cpu", progress=False).predict(PROMPTS, A, B)
    np.testing.assert_allclose(judged.predict(PROMPTS, A, B), fp, atol=0.02)
