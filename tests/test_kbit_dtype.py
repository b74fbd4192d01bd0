"""peft's k-bit preparation upcasts every frozen non-4-bit weight (embeddings, norms, lm_head) to fp32;
models.keep_frozen_in_compute_dtype puts them back in the compute dtype so activations and logits stay
bf16 (stage 22 at cutoff 10,240 on a 70B). Checked on CPU with the real peft function on a bf16 model."""
from __future__ import annotations

import torch

from arena_distill.models import keep_frozen_in_compute_dtype, load_causal_lm


def test_frozen_weights_back_to_bf16_trainable_untouched(tiny_model_dirs) -> None:
    from peft import prepare_model_for_kbit_training

    model = load_causal_lm(tiny_model_dirs["tiny_llama"], dtype=torch.bfloat16)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # the peft behaviour this guards against (peft 0.21.2, utils/other.py)
    assert model.get_input_embeddings().weight.dtype is torch.float32
    assert model.get_output_embeddings().weight.dtype is torch.float32
    trainable = model.model.norm.weight
    trainable.requires_grad_(True)  # stands in for a trainable tensor the engine keeps in fp32
    n = keep_frozen_in_compute_dtype(model, torch.bfloat16)
    assert n == sum(1 for p in model.parameters() if not p.requires_grad)
    assert all(p.dtype is torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    assert trainable.dtype is torch.float32
    trainable.requires_grad_(False)
    assert keep_frozen_in_compute_dtype(model, torch.bfloat16) == 1
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert model(input_ids=ids).logits.dtype is torch.bfloat16


def test_default_dtype_from_the_quantization_config(tiny_model_dirs) -> None:
    from types import SimpleNamespace

    model = load_causal_lm(tiny_model_dirs["tiny_llama"], dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.quantization_config = SimpleNamespace(bnb_4bit_compute_dtype=torch.float16)
    keep_frozen_in_compute_dtype(model)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
