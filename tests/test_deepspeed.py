"""DeepSpeed ZeRO through the shipped accelerate configs, on CPU (DeepSpeed's CPU accelerator + gloo). Slow.

`accelerate launch --config_file configs/accelerate/zero{2,3}.yaml --num_processes N src/07_distill_student.py`
must go through accelerate's DeepSpeed preparation (no "requires you to pass at least one of training or
evaluation dataloaders" error), run the stage's micro-batch / accumulation / clipping (read back from the
ZeRO checkpoint's DeepSpeed config), leave ZeRO optimizer states in `checkpoint/`, follow the plain
single-process loss curve, save only trainable weights, and resume after kill -9 on the same curve.
What works with 1 and 2 processes is tabled in docs/architecture.md ("DeepSpeed on CPU").
"""
from __future__ import annotations

import json
import signal
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT
from test_engine import add_teacher_logits
from test_kill_resume import rows, run
from test_train_stages import make_project

pytestmark = pytest.mark.slow
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def stage7(project, out, *extra: str) -> list[str]:
    """Stage 7 with the shipped tiny profile (configs/tiny.yaml: tiny_gemma2 student, both tiny teachers,
    global batch 16 = micro-batch 8 x 2), pointed at the test project's folders and models."""
    tmp = project.parent
    return [str(REPO_ROOT / "src" / "07_distill_student.py"), "--config", str(REPO_ROOT / "configs" / "tiny.yaml"),
            f"processed_dir={tmp / 'processed'}", f"model_dir={tmp_models(project)}", f"save_dir={tmp / 'save'}",
            "fold=0", "global_batch=8", "micro_batch=4", "max_steps=8", "eval_every=4", "save_every=2",
            "grad_clip=0.5", f"out_dir={out}", *extra]


def tmp_models(project) -> str:
    import yaml

    return yaml.safe_load(project.read_text())["common"]["model_dir"]


def launch(zero: int, nproc: int) -> list[str]:
    return [*ACCELERATE, "--config_file", str(REPO_ROOT / "configs" / "accelerate" / f"zero{zero}.yaml"),
            "--num_processes", str(nproc), "--main_process_port", "0"]


def ds_state(out):
    """The ZeRO optimizer shards and rank 0's state, read with weights_only=True (only DeepSpeed's own
    small classes are allowed besides tensors)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    files = sorted((out / "checkpoint" / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt"))
    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return files, torch.load(files[0], map_location="cpu", weights_only=True)


def assert_close_curves(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for k in ("loss", "ce", "kl_tiny_llama", "cos_tiny_qwen2", "valid_log_loss"):
            if k in x:
                assert abs(x[k] - y[k]) < tol, (k, x, y)


def assert_close_adapters(a, b, tol: float = 1e-5) -> None:
    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all("lora_" in k or "score" in k for k in wa)  # trainable weights only
    assert all(torch.allclose(wa[k], wb[k], atol=tol) for k in wa)


@pytest.fixture()
def project(tmp_path, tiny_model_dirs):
    path = make_project(tmp_path, tiny_model_dirs)
    add_teacher_logits(path)
    return path


def test_zero2_one_process_matches_plain_run_and_resumes_after_kill_9(project, tmp_path):
    plain, ds, killed = tmp_path / "plain", tmp_path / "ds", tmp_path / "killed"
    assert run([sys.executable, *stage7(project, plain)], plain / "log.jsonl") == 0
    assert run([*launch(2, 1), *stage7(project, ds)], ds / "log.jsonl") == 0
    files, state = ds_state(ds)
    assert len(files) == 1
    opt = state["optimizer_state_dict"]
    assert int(opt["zero_stage"]) == 2 and opt["base_optimizer_state"]  # ZeRO optimizer states (Adam moments)
    cfg = state["ds_config"]
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"],
            cfg["gradient_clipping"]) == (4, 2, 8, 0.5)  # from the stage config, not the yaml's 1.0
    module = torch.load(ds / "checkpoint" / "pytorch_model" / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=True)["module"]
    assert module and all("lora_" in k or "modules_to_save" in k for k in module)  # no frozen base in checkpoint
    assert_close_curves(rows(plain / "log.jsonl"), rows(ds / "log.jsonl"))
    assert_close_adapters(plain, ds)
    # kill -9 mid-run, then the same command again
    status = run([*launch(2, 1), *stage7(project, killed)], killed / "log.jsonl", kill_after_step=3)
    assert status == -signal.SIGKILL
    assert run([*launch(2, 1), *stage7(project, killed)], killed / "log.jsonl") == 0
    assert_close_curves(rows(ds / "log.jsonl"), rows(killed / "log.jsonl"))
    assert_close_adapters(ds, killed)
    assert (ds / "oof.csv").is_file() and json.loads((killed / "metrics.json").read_text())["best_step"] > 0


@pytest.mark.parametrize("zero,nproc", [(3, 1), (2, 2), (3, 2)])
def test_zero_stages_and_two_processes_follow_the_plain_curve(project, tmp_path, zero, nproc):
    # lora_dropout 0: with 2 processes each rank draws its own dropout masks, the curve is compared exactly
    plain, ds = tmp_path / "plain", tmp_path / "ds"
    assert run([sys.executable, *stage7(project, plain, "lora_dropout=0.0")], plain / "log.jsonl") == 0
    assert run([*launch(zero, nproc), *stage7(project, ds, "lora_dropout=0.0")], ds / "log.jsonl") == 0
    files, state = ds_state(ds)
    assert len(files) == nproc and int(state["optimizer_state_dict"]["zero_stage"]) == zero
    assert state["ds_config"]["gradient_accumulation_steps"] == 2 // nproc
    assert_close_curves(rows(plain / "log.jsonl"), rows(ds / "log.jsonl"), tol=1e-4)
    assert_close_adapters(plain, ds, tol=1e-4)
    assert np.isfinite(json.loads((ds / "metrics.json").read_text())["valid_log_loss"])
