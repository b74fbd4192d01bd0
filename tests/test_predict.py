"""Prediction: batched scoring returns rows in the original order (sorted or not, any batch size), the TTA
mapping is right for a model symmetric by construction, sharded runs gather to the single-process result,
and predict_test.py writes a valid submission for awkward test rows from merged and adapter models."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from arena_distill.arena_text import A_HEAD, B_HEAD, TAIL, encode_batch
from arena_distill.models import add_lora, load_classifier, load_tokenizer
from arena_distill.metrics import softmax
from arena_distill.scoring import score_classifier
from arena_distill.predict import (SWAP_PERM, gather_parts, tta_combine,
                                   unswap_probs, validate_submission, write_part)

REPO = Path(__file__).resolve().parents[1]


def _predict_module():
    spec = importlib.util.spec_from_file_location("predict_test_script", REPO / "predict_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dirs, tmp_path_factory) -> Path:
    """A 'merged' full-precision classifier with a non-trivial head."""
    base = tiny_model_dirs["tiny_gemma2"]
    tok = load_tokenizer(base)
    model = load_classifier(base, num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(3)))
    out = tmp_path_factory.mktemp("pred") / "final_merged"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------- scoring order
def test_sorted_batches_return_original_order(merged_dir):
    tok = load_tokenizer(merged_dir)
    model = load_classifier(merged_dir, num_labels=3, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 300, size=int(n)).tolist() + [tok.eos_token_id] for n in rng.integers(1, 60, 13)]
    with torch.inference_mode():
        one_by_one = np.concatenate([model(input_ids=torch.tensor([s])).logits.numpy() for s in seqs])
    for kwargs in ({"batch_size": 4}, {"batch_size": 5, "sort": False}, {"batch_size": 13},
                   {"batch_size": 8, "max_tokens": 100}):
        idx, logits, stats = score_classifier(model, seqs, tok.pad_token_id, device="cpu", progress=False, **kwargs)
        assert idx.tolist() == list(range(len(seqs)))
        np.testing.assert_allclose(logits, one_by_one, atol=1e-5, err_msg=str(kwargs))
        assert stats["rows"] == len(seqs)
    _, _, s_sorted = score_classifier(model, seqs, tok.pad_token_id, batch_size=4, device="cpu", progress=False)
    _, _, s_file = score_classifier(model, seqs, tok.pad_token_id, batch_size=4, sort=False, device="cpu",
                                   progress=False)
    assert s_sorted["padding_efficiency"] > s_file["padding_efficiency"]
    # shards: every row exactly once across ranks
    parts = [score_classifier(model, seqs, tok.pad_token_id, batch_size=3, shard=(r, 3), device="cpu",
                             progress=False)[0] for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(seqs)))


# --------------------------------------------------------------------------------------------- TTA
def test_tta_combine_maps_swapped_columns():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    p_sw = np.array([[0.1, 0.8, 0.1], [0.5, 0.2, 0.3]])  # swapped row: column 0 = "B (original) wins"
    np.testing.assert_allclose(unswap_probs(p_sw), [[0.8, 0.1, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(tta_combine(p, p_sw), [[0.75, 0.15, 0.1], [0.15, 0.4, 0.45]])
    np.testing.assert_allclose(tta_combine(p, None), p)
    assert SWAP_PERM.tolist() == [1, 0, 2]


class SymmetricByConstruction(torch.nn.Module):
    """logits = [len(A) / 20, len(B) / 20, 0.5] read from the template: swapping A and B swaps the first
    two logits exactly, so after mapping back the swapped pass must equal the straight one."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tok = tokenizer
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        out = []
        for row, mask in zip(input_ids, attention_mask):
            text = self.tok.decode(row[mask.bool()].tolist(), skip_special_tokens=True)
            a = text.split(A_HEAD, 1)[1].split(B_HEAD, 1)[0]
            b = text.split(B_HEAD, 1)[1].rsplit(TAIL, 1)[0]
            out.append([len(a) / 20, len(b) / 20, 0.5])
        return type("Out", (), {"logits": torch.tensor(out)})()


def test_tta_swapped_pass_agrees_for_symmetric_model(tiny_model_dirs):
    tok = load_tokenizer(tiny_model_dirs["tiny_gemma2"])
    model = SymmetricByConstruction(tok)
    prompts = ["Which is better?", "Say hi", "Explain"]
    a = ["A long and detailed answer with many words.", "hi", "same"]
    b = ["Short.", "hello there, friend!", "same"]
    straight = encode_batch(tok, prompts, a, b, max_length=256)
    swapped = encode_batch(tok, prompts, b, a, max_length=256)
    _, l1, _ = score_classifier(model, straight, tok.pad_token_id, batch_size=2, device="cpu", progress=False)
    _, l2, _ = score_classifier(model, swapped, tok.pad_token_id, batch_size=2, device="cpu", progress=False)
    p1, p2 = softmax(l1), softmax(l2)
    np.testing.assert_allclose(unswap_probs(p2), p1, atol=1e-7)
    np.testing.assert_allclose(tta_combine(p1, p2), p1, atol=1e-7)
    # column order: the row whose A is longer favours winner_model_a, the one whose B is longer winner_model_b
    assert p1[0].argmax() == 0 and p1[1].argmax() == 1
    assert p1[2, 0] == pytest.approx(p1[2, 1])


def test_gather_parts_checks_coverage(tmp_path):
    write_part(tmp_path, "t", 0, 2, np.array([0, 2]), np.ones((2, 3), np.float32) * [[0], [2]], {})
    write_part(tmp_path, "t", 1, 2, np.array([1, 3]), np.ones((2, 3), np.float32) * [[1], [3]], {})
    out = gather_parts(tmp_path, "t", 2, 4, timeout_s=1)
    assert out[:, 0].tolist() == [0, 1, 2, 3] and not list(tmp_path.glob("part-*"))
    write_part(tmp_path, "u", 0, 2, np.array([0]), np.zeros((1, 3), np.float32), {})
    with pytest.raises(TimeoutError, match="rank1"):
        gather_parts(tmp_path, "u", 2, 2, timeout_s=0.2, poll_s=0.05)


# --------------------------------------------------------------------------------------------- predict_test.py
def awkward_test_csv(path: Path) -> list[int]:
    rows = [
        (101, '["What is 2+2?"]', '["4"]', '["Four, obviously."]'),
        (7, '["first turn", null]', '[null, "second answer"]', '["a", "b"]'),           # null turns
        (55, '["Tell me a joke"]', '[""]', '[]'),                                         # empty responses
        (3, '["emoji please \\ud83d\\ude00"]', '["Sure \\ud83d\\ude03\\ud83d\\udc4d"]',  # surrogate pairs
         '["\\ud83c\\udf89 party"]'),
        (999, '["long one"]', json.dumps(["x" * 30000]), json.dumps(["word " * 6000])),  # 30k characters
        (12, 'null', '[null]', '["ok"]'),
    ]
    pd.DataFrame(rows, columns=["id", "prompt", "response_a", "response_b"]).to_csv(path, index=False)
    return [r[0] for r in rows]


def _profile(tmp: Path, **predict) -> Path:
    profile = {"common": {"data_dir": str(tmp / "data"), "save_dir": str(tmp / "save"), "student": "stud"},
               "predict": {"max_length": 256, "batch_size": 4, **predict}}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_predict_test_awkward_rows_merged(merged_dir, tmp_path):
    ids = awkward_test_csv(tmp_path / "test.csv")
    out = tmp_path / "sub" / "submission.csv"
    cfg = _profile(tmp_path, test_csv=str(tmp_path / "test.csv"), model_source="merged",
                   merged_dir=str(merged_dir), out=str(out))
    report = _predict_module().main(["--config", str(cfg)])
    sub = pd.read_csv(out)
    assert validate_submission(sub, ids) == []
    assert sub["id"].tolist() == ids and report["rows"] == len(ids)
    assert (tmp_path / "sub" / "predict_report.json").is_file()
    assert report["rank0_scoring"]["rows"] == 2 * len(ids)  # TTA: both orders scored
    # TTA really averages the two orders: compare with a straight-only run
    out2 = tmp_path / "sub2.csv"
    _predict_module().main(["--config", str(cfg), "tta=false", f"out={out2}", "sort=false"])
    straight = pd.read_csv(out2)
    assert straight["id"].tolist() == ids
    assert not np.allclose(straight.iloc[:, 1:].to_numpy(), sub.iloc[:, 1:].to_numpy(), atol=1e-6)


def test_predict_test_sharded_equals_single(merged_dir, tmp_path, monkeypatch):
    ids = awkward_test_csv(tmp_path / "test.csv")
    cfg = _profile(tmp_path, test_csv=str(tmp_path / "test.csv"), model_source="merged", merged_dir=str(merged_dir))
    single = tmp_path / "single.csv"
    _predict_module().main(["--config", str(cfg), f"out={single}", "batch_size=2"])
    sharded = tmp_path / "sharded" / "submission.csv"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test-run")
    monkeypatch.setenv("RANK", "1")
    assert _predict_module().main(["--config", str(cfg), f"out={sharded}", "batch_size=2"])["rank"] == 1
    assert not sharded.exists()  # only rank 0 writes
    monkeypatch.setenv("RANK", "0")
    _predict_module().main(["--config", str(cfg), f"out={sharded}", "batch_size=2"])
    a, b = pd.read_csv(single), pd.read_csv(sharded)
    assert b["id"].tolist() == ids
    np.testing.assert_allclose(a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy(), atol=1e-6)


def test_predict_test_from_adapter_and_missing_inputs(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["tiny_gemma2"]
    tok = load_tokenizer(base)
    peft = add_lora(load_classifier(base, num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id),
                    r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    adapter = tmp_path / "save" / "stud_avg"
    peft.save_pretrained(adapter)
    (adapter / "config.yaml").write_text(yaml.safe_dump({"base_model": str(base)}))
    (tmp_path / "data").mkdir()
    ids = awkward_test_csv(tmp_path / "data" / "test.csv")
    cfg = _profile(tmp_path, out=str(tmp_path / "sub.csv"))
    report = _predict_module().main(["--config", str(cfg)])  # auto: no gptq, no merged -> the adapter
    assert report["model_source"] == "adapter"
    assert validate_submission(pd.read_csv(tmp_path / "sub.csv"), ids) == []
    from arena_distill.io import StageInputError

    with pytest.raises(StageInputError, match="run first: sh run_final.sh"):
        _predict_module().main(["--config", str(cfg), "model_source=gptq"])
    with pytest.raises(StageInputError, match="test file"):
        _predict_module().main(["--config", str(cfg), f"test_csv={tmp_path / 'nope.csv'}"])


def test_predict_test_encodes_as_the_model_folders_record(merged_dir, tmp_path):
    """A model folder with encoding.json (stages 8/9 write it) is predicted with its training encoding, not the
    profile's prepare values; a key given to predict wins; a record from before the BOS work is read as such."""
    import shutil

    from arena_distill import encoding_record as er

    ids = awkward_test_csv(tmp_path / "test.csv")
    folder = tmp_path / "final_merged"
    shutil.copytree(merged_dir, folder)
    er.write_record(folder, er.make_record({"max_length": 256, "prompt_max_tokens": 40, "prompt_max_words": 100,
                                            "response_max_words": 300, "truncation_side": "left",
                                            "word_split": "whitespace", "prompt_cap": "always", "bos": "none"}))
    profile = yaml.safe_load(_profile(tmp_path, test_csv=str(tmp_path / "test.csv"), model_source="merged",
                                      merged_dir=str(folder), out=str(tmp_path / "sub.csv")).read_text())
    profile["prepare"] = {"prompt_max_tokens": 64, "truncation_side": "right", "bos": "auto"}  # not what trained
    cfg = tmp_path / "profile.yaml"
    cfg.write_text(yaml.safe_dump(profile))
    report = _predict_module().main(["--config", str(cfg)])
    assert report["encode_options"] == {"max_length": 256, "prompt_max_tokens": 40, "prompt_max_words": 100,
                                        "response_max_words": 300, "truncation_side": "left",
                                        "word_split": "whitespace", "prompt_cap": "always", "bos": "none"}
    assert pd.read_csv(tmp_path / "sub.csv")["id"].tolist() == ids
    report = _predict_module().main(["--config", str(cfg), "bos=auto", f"out={tmp_path / 'sub2.csv'}"])
    assert report["encode_options"]["bos"] == "auto" and report["encode_options"]["prompt_max_tokens"] == 40
    # a record written before word_split/prompt_cap/bos existed: those rows were encoded the old way
    er.write_record(folder, {"format_version": 1, "encoding": {"max_length": 256, "prompt_max_tokens": 40,
                                                               "prompt_max_words": 100, "response_max_words": 300,
                                                               "truncation_side": "right"}})
    report = _predict_module().main(["--config", str(cfg), f"out={tmp_path / 'sub3.csv'}"])
    assert {k: report["encode_options"][k] for k in ("word_split", "prompt_cap", "bos")} == \
        {"word_split": "whitespace", "prompt_cap": "always", "bos": "none"}
