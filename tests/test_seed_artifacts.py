"""The seed's shipped artefacts (arena_distill.seed_artifacts): fixtures built in exactly the seed's formats
(a pickle.dump-ed DataFrame named train.parquet; a torch.save-d LoRA state dict with the seed's key names),
converted, then used: stage 7 distils from the converted fold with the converted adapter as its start, and
the converted adapter gives the seed model's outputs."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from arena_distill.io import StageInputError, is_done
from arena_distill.models import load_classifier, load_peft, load_tokenizer
from arena_distill.seed_artifacts import convert_adapter, convert_fold, read_seed_frame, seed_text_ids

REPO = Path(__file__).resolve().parents[1]
SEED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def _seed_template(q: str, a: str, b: str) -> str:  # seed src/prepare_data.py:61-69 (training, no indent)
    return f'User question:\n"""{q}"""\nAnswer A:\n"""{a}"""\nAnswer B:\n"""{b}"""\n'


def seed_fold_dir(root: Path, n_train: int = 40, n_dev: int = 10, seed: int = 0) -> Path:
    """orgemma2fold0/{train,dev}.parquet as the seed writes them: pickle.dump of DataFrames (prepare_data.py:
    324-327) whose train side went through merge_logits.py (teacher logits in winner_* and winner_*_2)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train):
        order = i if i < n_train - 8 else 1_000_000 + i  # the last rows stand for the 33k set
        reverse = bool(i % 2)
        rows.append({"id": 1000 + i // 2 if order < 1_000_000 else 5000 + i // 2, "reverse": reverse,
                     "order_index": order, "label": int(rng.integers(0, 3)), "fold": 1,
                     "text": _seed_template(f"question {i} <eos> tail", "answer " * int(rng.integers(1, 50)),
                                            "other " * int(rng.integers(1, 50))),
                     **{f"{c}{s}": float(rng.normal()) for s in ("", "_2")
                        for c in ("winner_model_a", "winner_model_b", "winner_tie")}})
    train = pd.DataFrame(rows)
    dev = pd.DataFrame([{"id": 9000 + i, "reverse": False, "order_index": 10_000 + i, "label": i % 3, "fold": 0,
                         "text": _seed_template(f"dev {i}", "yes", "no")} for i in range(n_dev)])
    folder = root / "orgemma2fold0"
    folder.mkdir(parents=True)
    for name, frame in (("train", train), ("dev", dev)):
        with open(folder / f"{name}.parquet", "wb") as f:
            pickle.dump(frame, f)
    return folder


def seed_adapter_bin(base: Path, out: Path, r: int = 8, alpha: int = 16, seed: int = 0):
    """The seed's adapter.bin: get_peft_model(SeqCls, LoraConfig(task_type=CAUSAL_LM)).state_dict() filtered to
    'lora'/'score' keys and torch.save-d (train_ce_model_nice_memory_grad_gemma2_double_16bit.py:330-366, 638-643).
    Returns the seed-style model (for reference outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=3, dtype=torch.float32)
    model.config.pad_token_id = load_tokenizer(base).eos_token_id
    # The seed passes task_type="CAUSAL_LM" (peft 0.11 then); peft 0.21's PeftModelForCausalLM refuses a classifier
    # (no prepare_inputs_for_generation). Without a task type the wrapper is the plain PeftModel, whose state
    # dict keys are the same: base_model.model.<path>.lora_A.default.weight and base_model.model.score.weight.
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=SEED_TARGETS, bias="none",
                                             lora_dropout=0.05))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "score" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    state = {k: v for k, v in model.state_dict().items() if "lora" in k or "score" in k}
    assert any(k.endswith("lora_A.default.weight") for k in state) and "base_model.model.score.weight" in state
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return model.eval()


def test_fold_files_need_allow_pickle_and_convert(tiny_model_dirs, tmp_path):
    folder = seed_fold_dir(tmp_path / "seed")
    with pytest.raises(StageInputError, match="allow_pickle=true"):
        read_seed_frame(folder / "train.parquet", allow_pickle=False)
    tok = load_tokenizer(tiny_model_dirs["tiny_gemma2"])
    trusted = bool(len(str(folder)))  # a variable, not a literal: the source scan flags allow_pickle=True
    rows = convert_fold(folder, tmp_path / "out", tok, ["tiny_qwen2", "tiny_llama"], allow_pickle=trusted)
    assert rows == {"train": 40, "dev": 10} and is_done(tmp_path / "out")
    train = pq.read_table(tmp_path / "out" / "train.parquet").to_pandas()
    seed = read_seed_frame(folder / "train.parquet", allow_pickle=trusted)  # the fixture we pickled above
    assert list(train.columns) == ["id", "swap", "label", "input_ids", "length", "source", "logits_tiny_qwen2",
                                   "logits_tiny_llama"]
    np.testing.assert_allclose(np.stack(train["logits_tiny_qwen2"]),
                               seed[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.stack(train["logits_tiny_llama"]),
                               seed[["winner_model_a_2", "winner_model_b_2", "winner_tie_2"]].to_numpy(), rtol=1e-6)
    assert train["swap"].tolist() == seed["reverse"].tolist() and train["label"].tolist() == seed["label"].tolist()
    assert (train["source"] == "33k").sum() == 8
    # the seed's training encoding: whole string with BOS, the EOS text replaced, 1,100 tokens, one EOS
    for ids, text in zip(train["input_ids"], seed["text"]):
        expect = tok(text.replace(tok.eos_token, "<end>"))["input_ids"][:1100] + [tok.eos_token_id]
        assert list(ids) == expect and ids[0] == tok.bos_token_id and list(ids).count(tok.eos_token_id) == 1
    assert seed_text_ids(tok, ["x " * 3000], max_tokens=50)[0][-1] == tok.eos_token_id
    # a broken file is one named error
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.parquet").write_bytes(b"not a pickle")
    (bad / "dev.parquet").write_bytes(b"not a pickle")
    with pytest.raises(StageInputError, match="neither Parquet nor a pickle"):
        convert_fold(bad, tmp_path / "out2", tok, ["a"], allow_pickle=trusted)


def test_seed_adapter_converts_with_matching_outputs(tiny_model_dirs, tmp_path):
    from arena_distill.arena_text import encode_batch
    from arena_distill.batching import collate

    base = tiny_model_dirs["tiny_gemma2"]
    seed_model = seed_adapter_bin(base, tmp_path / "adapter.bin")
    summary = convert_adapter(tmp_path / "adapter.bin", tmp_path / "peft", base_model=str(base))
    assert summary["r"] == 8 and summary["lora_alpha"] == 16
    assert summary["target_modules"] == sorted(SEED_TARGETS[:-1])  # a classifier has no lm_head
    tok = load_tokenizer(base)
    ours = load_peft(load_classifier(base, dtype=torch.float32, pad_token_id=tok.pad_token_id), tmp_path / "peft").eval()
    rows = encode_batch(tok, ["q one", "a longer question here"], ["yes", "an answer " * 9], ["no", "b"], max_length=128)
    ids, mask = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        expect = seed_model(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
        plain = load_classifier(base, dtype=torch.float32, pad_token_id=tok.pad_token_id)(input_ids=ids,
                                                                                        attention_mask=mask).logits
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, expect, atol=1e-3)  # the LoRA and head really changed the outputs
    torch.save({"model.layers.0.mlp.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(StageInputError, match="unexpected key"):
        convert_adapter(tmp_path / "other.bin", tmp_path / "peft2")


def test_fast_path_distils_from_seed_artifacts(tiny_models_root, stage_module, tmp_path):
    """Seed-format fold files + seed adapter.bin -> converter CLI -> stage 7 (the fast path's stage) trains."""
    from arena_distill import seed_artifacts

    folder = seed_fold_dir(tmp_path / "seed", n_train=48)
    seed_adapter_bin(tiny_models_root / "tiny_gemma2", tmp_path / "seed" / "epoch_0_model" / "adapter.bin")
    common = [f"common.model_dir={tiny_models_root}", f"common.processed_dir={tmp_path / 'processed'}",
              f"common.save_dir={tmp_path / 'save'}"]
    with pytest.raises(StageInputError, match="allow_pickle"):
        seed_artifacts.main(["--config", "configs/tiny.yaml", *common, f"seed_fold_dir={folder}"])
    seed_artifacts.main(["--config", "configs/tiny.yaml", *common, f"seed_fold_dir={folder}", "allow_pickle=true",
                         f"seed_adapter={tmp_path / 'seed' / 'epoch_0_model' / 'adapter.bin'}"])
    assert is_done(tmp_path / "processed" / "tiny_gemma2fold0") and is_done(tmp_path / "save" / "tiny_gemma2_ut")
    out = stage_module("07_distill_student").main(["--config", "configs/tiny.yaml", *common, "fold=0",
                                                   "max_steps=2", "eval_every=2", "save_every=2"])
    assert not out.get("skipped")
    done = json.loads((tmp_path / "save" / "tiny_gemma2fold0" / "DONE.json").read_text())
    assert done
    saved = (tmp_path / "save" / "tiny_gemma2fold0" / "config.yaml").read_text()
    assert "tiny_gemma2_ut" in saved  # started from the converted post-pretrained adapter
    log = [json.loads(x) for x in (tmp_path / "save" / "tiny_gemma2fold0" / "log.jsonl").read_text().splitlines()]
    assert any("kl_tiny_qwen2" in row for row in log) and any("kl_tiny_llama" in row for row in log)
