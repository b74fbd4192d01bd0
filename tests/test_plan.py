"""src/plan.py: the trainable-parameter count of the production Llama-3-70B teacher against a hand count,
the model-state memory against DeepSpeed's own estimator, and every shipped profile fitting its machine."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plan():
    spec = importlib.util.spec_from_file_location("plan_script", REPO / "src" / "plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def lora_params(d_in: int, d_out: int, r: int) -> int:
    """LoRA on a Linear(d_in, d_out): A is r x d_in, B is d_out x r."""
    return r * (d_in + d_out)


def test_llama3_70b_teacher_trainable_params_match_hand_count(plan) -> None:
    # Llama-3-70B: hidden 8192, 64 heads x 128, 8 KV heads x 128 = 1024, MLP 28672, 80 layers, untied,
    # as a 3-class classifier (score head 8192 -> 3, no bias). LoRA r=64 on every linear of every block.
    h, kv, mlp, layers, r = 8192, 8 * 128, 28672, 80, 64
    per_layer = (lora_params(h, h, r)            # q_proj
                 + 2 * lora_params(h, kv, r)     # k_proj, v_proj
                 + lora_params(h, h, r)          # o_proj
                 + 2 * lora_params(h, mlp, r)    # gate_proj, up_proj
                 + lora_params(mlp, h, r))       # down_proj
    head = h * 3
    hand = layers * per_layer + head
    assert per_layer == 10_354_688 and hand == 828_399_616
    arch = plan.build_on_meta("llama3_70b", "model_path", "SEQ_CLS",
                              {"r": 64, "alpha": 128, "dropout": 0.05, "target_modules": ["all-linear"]})
    assert arch["trainable"] == hand
    # base classifier: 70,553,706,496 (the public count) minus the 128,256 x 8192 LM head, plus the score head
    assert arch["total"] == 70_553_706_496 - 128_256 * 8192 + head


@pytest.mark.parametrize("zero, n_gpus", [(2, 8), (2, 1), (2, 16), (3, 8)])
def test_model_states_agree_with_deepspeed_estimator(plan, zero: int, n_gpus: int) -> None:
    trainable, largest = 828_399_616, 64 * (28672 + 8192)
    ours = plan.model_state_bytes(trainable, zero, n_gpus, largest)
    theirs = plan.deepspeed_estimate(trainable, zero, n_gpus, largest)
    assert abs(ours - theirs) <= 1  # DeepSpeed truncates to int


@pytest.mark.slow  # ~8 s: every profile's stages built on the meta device
def test_every_profile_passes_the_plan(plan, tiny_models_root: Path) -> None:
    profiles = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in profiles} <= set(plan.PROFILES), "every shipped profile has a machine in plan.PROFILES"
    for path in profiles:
        extra = ["--model-dir", str(tiny_models_root)] if path.name == "tiny.yaml" else []
        plans = plan.main(["--config", str(path), "--strict", *extra])
        assert plans and all(p.fits for p in plans), path.name
        for p in plans:  # where DeepSpeed is used, the plan's model states are DeepSpeed's estimate
            if p.deepspeed_gib is not None:
                assert p.states_gib == pytest.approx(p.deepspeed_gib, rel=1e-6)


def test_plan_flags_what_does_not_fit_and_names_the_knob(plan) -> None:
    """The issue's two traps: default max_tokens 16384 on a T4, and stage 22 with peft's fp32 upcast."""
    a100 = plan.C.read_profile(REPO / "configs" / "a100x8.yaml")
    [pred] = plan.plan_profile(a100, plan.HARDWARE["2xT4-16GB"], ["predict"])
    assert not pred.fits and pred.knob.startswith("max_tokens=")
    assert 13.0 < pred.per_gpu_gib < 14.6  # ~13.4 of 14.6 GiB: over the 92% budget
    kaggle = plan.C.read_profile(REPO / "configs" / "kaggle_2xt4.yaml")
    [pred] = plan.plan_profile(kaggle, plan.HARDWARE["2xT4-16GB"], ["predict"])
    assert pred.fits and pred.usable_gib - pred.per_gpu_gib > 0.8
    [sft] = plan.plan_profile(a100, plan.HARDWARE["8xA100-80GB"], ["logic_sft"])
    assert sft.fits and any("fp32 upcast" in n and "would be 9" in n for n in sft.notes)
    [teacher, _] = plan.plan_profile(a100, plan.HARDWARE["1x24GB"], ["teacher"])
    assert not teacher.fits and "weights alone" in teacher.knob
