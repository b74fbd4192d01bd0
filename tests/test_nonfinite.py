"""The non-finite guard of score_classifier, forced on CPU: a forward hook makes the fp16 model's logits
infinite for long batches only (standing in for Gemma-2's fp16 overflow). The guard must score exactly
those batches again in fp32 (the CPU safe dtype), give the fp32 result for them, leave the model's fp16
weights bit-identical, and stop with an error naming the rows when asked to or when the safe pass fails."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from arena_distill.batching import sorted_batches
from arena_distill.models import load_classifier, load_tokenizer
from arena_distill.scoring import _rescore_in, safe_dtype, score_classifier

LONG = 40  # batches whose longest row reaches this many tokens "overflow"


@pytest.fixture(scope="module")
def fp16_model(tiny_model_dirs):
    base = tiny_model_dirs["tiny_gemma2"]
    torch.manual_seed(0)
    model = load_classifier(base, num_labels=3, dtype=torch.float16, pad_token_id=load_tokenizer(base).pad_token_id)
    return model.eval()


def _overflow_hook(module, inputs, output):
    if output.dtype is torch.float16 and output.shape[1] >= LONG:
        return output * float("inf")
    return output


def _rows(n: int = 12) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(5, 900, size=int(k)).tolist() for k in rng.integers(5, 60, size=n)]


def test_safe_dtype_by_capability() -> None:
    assert safe_dtype((9, 0)) is torch.bfloat16 and safe_dtype((8, 0)) is torch.bfloat16
    assert safe_dtype((7, 5)) is torch.float32 and safe_dtype(None) is torch.float32


def test_nonfinite_batches_rescored_in_fp32(fp16_model) -> None:
    rows = _rows()
    pad = fp16_model.config.pad_token_id
    before = {k: v.clone() for k, v in fp16_model.state_dict().items()}
    clean_idx, clean, _ = score_classifier(fp16_model, rows, pad, batch_size=4, device="cpu", progress=False)
    handle = fp16_model.score.register_forward_hook(_overflow_hook)
    try:
        idx, logits, stats = score_classifier(fp16_model, rows, pad, batch_size=4, device="cpu", progress=False)
    finally:
        handle.remove()
    assert np.isfinite(logits).all()
    plan = sorted_batches(np.array([len(r) for r in rows]), 4, None)  # the plan score_classifier follows
    overflowing = [b for b in plan if max(len(rows[i]) for i in b) >= LONG]
    assert stats["rescored_batches"] == len(overflowing) >= 1 and len(overflowing) < len(plan)
    # the fp16 weights are untouched by the fp32 excursion
    after = fp16_model.state_dict()
    assert all(after[k].dtype is torch.float16 and torch.equal(after[k], v) for k, v in before.items()
               if v.is_floating_point())
    # rescored rows = the same weights in fp32; the other rows = the plain fp16 result
    # (a copy: .float()/.half() on the shared model would leave its fp32 rotary buffer in fp16)
    ref = copy.deepcopy(fp16_model).float()
    fp32 = {i: ref(input_ids=torch.tensor([rows[i]])).logits[0].detach().numpy() for i in range(12)}
    rescored = {int(i) for b in overflowing for i in b}
    for i in idx:
        if i in rescored:
            np.testing.assert_allclose(logits[i], fp32[i], atol=1e-4)
        else:
            np.testing.assert_array_equal(logits[i], clean[i])


def test_error_mode_names_rows(fp16_model) -> None:
    rows = _rows()
    handle = fp16_model.score.register_forward_hook(_overflow_hook)
    try:
        with pytest.raises(FloatingPointError, match=r"non-finite logits for rows \[\d+"):
            score_classifier(fp16_model, rows, fp16_model.config.pad_token_id, batch_size=4, device="cpu",
                             progress=False, nonfinite="error")
    finally:
        handle.remove()


def test_stops_when_the_safe_dtype_overflows_too(fp16_model) -> None:
    handle = fp16_model.score.register_forward_hook(lambda m, i, out: out * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="torch.float16 and torch.float32"):
            score_classifier(fp16_model, _rows(), fp16_model.config.pad_token_id, batch_size=4, device="cpu",
                             progress=False)
    finally:
        handle.remove()
    assert next(fp16_model.parameters()).dtype is torch.float16


def test_bf16_excursion_restores_fp16_weights_exactly(fp16_model) -> None:
    """fp16 -> bf16 -> fp16 would round the weights: the saved copy must put them back bit for bit."""
    # non-persistent buffers too: the rotary inv_freq stays fp32 (model.to would have cast it)
    tensors = lambda: {**fp16_model.state_dict(), **dict(fp16_model.named_buffers())}  # noqa: E731
    before = {k: v.clone() for k, v in tensors().items()}
    assert any(v.dtype is torch.float32 for v in before.values())
    ids = torch.tensor([_rows(1)[0]])
    out = _rescore_in(fp16_model, torch.bfloat16, ids, torch.ones_like(ids))
    assert out.dtype is torch.float32 and torch.isfinite(out).all()
    after = tensors()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
