"""The dtype rule by compute capability (dist.dtype_for_capability), checked without a GPU: the capability
is passed in. T4 (sm75) must get fp16 although torch 2.13's ``is_bf16_supported()`` says True there."""
from __future__ import annotations

import pytest
import torch

from arena_distill.dist import dtype_for_capability, mixed_precision_for, pick_dtype

T4, V100, A100, A10G, H100 = (7, 5), (7, 0), (8, 0), (8, 6), (9, 0)


@pytest.mark.parametrize("cap, dtype, mp", [
    (T4, torch.float16, "fp16"), (V100, torch.float16, "fp16"), (A100, torch.bfloat16, "bf16"),
    (A10G, torch.bfloat16, "bf16"), (H100, torch.bfloat16, "bf16"), (None, torch.float32, "no")])
def test_auto_by_capability(cap, dtype, mp) -> None:
    assert dtype_for_capability(cap) is dtype
    assert mixed_precision_for(cap) == mp


def test_explicit_request_wins_and_bf16_on_t4_warns(capsys) -> None:
    assert dtype_for_capability(H100, "fp16") is torch.float16
    assert dtype_for_capability(None, "bf16") is torch.bfloat16
    assert capsys.readouterr().err == ""
    assert dtype_for_capability(T4, "bf16") is torch.bfloat16
    assert "emulated" in capsys.readouterr().err
    assert mixed_precision_for(T4, "no") == "no"
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        dtype_for_capability(A100, "int8")


def test_the_emulation_trap_is_real_in_the_pinned_torch() -> None:
    """The reason for the rule: torch's check falls through to creating a bf16 tensor below sm80."""
    import inspect

    src = inspect.getsource(torch.cuda.is_bf16_supported)
    assert "including_emulation: bool = True" in src and "_check_bf16_tensor_supported" in src


def test_cpu_process_gets_fp32() -> None:
    assert pick_dtype("auto", torch.device("cpu")) is torch.float32
