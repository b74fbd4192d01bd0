"""GPTQ on CPU: a tiny classifier at 8 and 4 bit (transformers GPTQConfig route, score head kept) and a
tiny causal LM at 4 bit (GPTQModel route) save, reload and predict close to the full-precision model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arena_distill import quant
from arena_distill.metrics import softmax
from arena_distill.models import load_classifier, load_tokenizer

CAL_TEXTS = [f"User question: what is {i} + {i}? Answer A: {2 * i}. Answer B: {i}{i}. The model compares both."
             for i in range(16)]


def _classifier_dir(base: Path, out: Path, seed: int = 0) -> Path:
    """A full-precision 3-label classifier folder with a non-trivial score head (as after merging)."""
    tok = load_tokenizer(base)
    model = load_classifier(base, num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g) * 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _probs(model, tok, texts: list[str]) -> np.ndarray:
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return softmax(model(**enc).logits.float().numpy())


@pytest.fixture(scope="module")
def fp_classifier(tiny_model_dirs, tmp_path_factory) -> Path:
    return _classifier_dir(tiny_model_dirs["tiny_llama"], tmp_path_factory.mktemp("q") / "merged")


@pytest.mark.parametrize("bits,tol", [(8, 0.01), (4, 0.1)])
def test_quantize_classifier_roundtrip(fp_classifier, tmp_path, bits, tol):
    tok = load_tokenizer(fp_classifier)
    out = tmp_path / f"gptq{bits}"
    info = quant.quantize_classifier(fp_classifier, out, CAL_TEXTS, tok, bits=bits, group_size=32, max_length=64)
    assert info["bits"] == bits and info["n_calibration"] == len(CAL_TEXTS)
    assert info["calibration_tokens_mean"] <= 64
    # The folder alone predicts: config with quantization_config (no calibration data inside), weights, tokenizer.
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["bits"] == bits
    assert cfg["quantization_config"].get("dataset") is None
    assert (out / "tokenizer_config.json").is_file()
    assert quant.is_quantized(out) and not quant.is_quantized(fp_classifier)

    fp = load_classifier(fp_classifier, num_labels=3, dtype=torch.float32)
    q = load_classifier(out, num_labels=3, dtype=torch.float32)
    assert hasattr(q.model.layers[0].self_attn.q_proj, "qweight")  # really quantized (packed ints)
    assert q.score.weight.shape == (3, fp.config.hidden_size)  # the head survived
    torch.testing.assert_close(q.score.weight, fp.score.weight)  # and is kept in full precision
    texts = CAL_TEXTS[:4] + ["A completely different sentence, not seen in calibration."]
    p_fp, p_q = _probs(fp, tok, texts), _probs(q, tok, texts)
    assert np.isfinite(p_q).all()
    np.testing.assert_allclose(p_q.sum(1), 1, atol=1e-5)
    assert np.abs(p_q - p_fp).max() < tol


def test_quantize_classifier_refuses_quantized_input(fp_classifier, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"bits": 8}}))
    with pytest.raises(quant.StageInputError, match="already quantized"):
        quant.quantize_classifier(tmp_path, tmp_path / "out", CAL_TEXTS, None, bits=8)
    with pytest.raises(ValueError, match="bits"):
        quant.quantize_classifier(fp_classifier, tmp_path / "out", CAL_TEXTS, None, bits=5)


def test_calibration_examples_truncate_and_accept_ids(tiny_model_dirs):
    tok = load_tokenizer(tiny_model_dirs["tiny_llama"])
    ex = quant.calibration_examples(["word " * 500, "short"], tok, max_length=32)
    assert [e["input_ids"].shape for e in ex][0] == (1, 32)
    assert all(e["attention_mask"].sum() == e["input_ids"].shape[1] for e in ex)
    ex = quant.calibration_examples([[1, 2, 3, 4, 5], [7]], max_length=3)
    assert ex[0]["input_ids"].tolist() == [[1, 2, 3]] and ex[1]["input_ids"].tolist() == [[7]]
    with pytest.raises(ValueError, match="empty"):
        quant.calibration_examples([], tok)


def test_quantize_causal_lm_4bit(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    base = tiny_model_dirs["tiny_llama"]
    out = tmp_path / "lm_gptq4"
    info = quant.quantize_causal_lm(base, out, CAL_TEXTS, bits=4, group_size=32, max_length=64)
    assert info["bits"] == 4 and info["n_calibration"] == len(CAL_TEXTS)
    assert quant.is_quantized(out) and (out / "tokenizer_config.json").is_file()
    tok = load_tokenizer(out)
    fp = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    q = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
    enc = tok(CAL_TEXTS[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        a, b = fp(**enc).logits, q(**enc).logits
    assert torch.isfinite(b).all()
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 0.5, rel


def test_quantize_causal_lm_refuses_classifier(fp_classifier, tmp_path):
    with pytest.raises(ValueError, match="quantize_classifier"):
        quant.quantize_causal_lm(fp_classifier, tmp_path / "out", CAL_TEXTS, bits=4)


# --------------------------------------------------------------------------------------------- kernels
def test_gptq_kernel_choice_per_target_needs_no_build():
    # T4 / A100 / H100 (and in-between capabilities such as A10G sm86) get the plain-torch kernel
    for cap in ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0)):
        assert quant.gptq_kernels(cap) == ["gptq_torch", "gptq_torch_eager"]
    assert quant.gptq_kernels((9, 0), "gptq_marlin") == ["gptq_marlin", "gptq_torch", "gptq_torch_eager"]
    assert quant.gptq_kernels((7, 5), "gptq_torch_eager") == ["gptq_torch_eager", "gptq_torch"]
    assert quant.gptq_kernels(None) == ["auto"]  # CPU: GPTQModel's auto only has torch kernels there
    with pytest.raises(ValueError, match="unknown GPTQ kernel 'marlin'"):
        quant.gptq_kernels((8, 0), "marlin")


def test_load_gptq_falls_back_when_a_kernel_fails(fp_classifier, tmp_path, capsys, monkeypatch):
    """Marlin is CUDA-only: asked for on the CPU it fails, and the loader falls back to the torch kernel."""
    tok = load_tokenizer(fp_classifier)
    out = tmp_path / "gptq8"
    quant.quantize_classifier(fp_classifier, out, CAL_TEXTS, tok, bits=8, group_size=32, max_length=64)
    cpu = torch.device("cpu")
    model = quant.load_gptq(out, dtype=torch.float16, device=cpu, kernel="gptq_marlin", capability=(8, 0),
                            num_labels=3)
    assert "GPTQ kernel gptq_marlin failed" in capsys.readouterr().err
    assert quant.kernel_in_use(model) == "TorchLinear"
    ref = quant.load_gptq(out, dtype=torch.float16, device=cpu, num_labels=3)  # CPU auto
    # the compiler-free form: same layers, no torch.compile wrapper, no Triton
    eager = quant.load_gptq(out, dtype=torch.float16, device=cpu, kernel="gptq_torch_eager", num_labels=3)
    layer = eager.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "TorchLinear" and "dequantize_weight" not in layer.__dict__
    assert "dequantize_weight" in model.model.layers[0].self_attn.q_proj.__dict__  # compiled wrapper
    enc = tok(CAL_TEXTS[:4], return_tensors="pt", padding=True)
    with torch.inference_mode():
        for m in (ref, eager):
            np.testing.assert_allclose(model(**enc).logits.float().numpy(), m(**enc).logits.float().numpy(),
                                       atol=1e-2)
    # every kernel failing: one error naming each
    monkeypatch.setattr(quant, "gptq_kernels", lambda cap, req: ["gptq_marlin", "gptq_exllama_v2"])
    with pytest.raises(RuntimeError, match=r"no GPTQ kernel could load and run[\s\S]*gptq_marlin: [\s\S]*gptq_exllama_v2: "):
        quant.load_gptq(out, dtype=torch.float16, device=cpu, num_labels=3)
