"""Multi-process training through a real launcher (torchrun, gloo on CPU): slow.

Invariant (TRL-style "batch 8x1 == 1x8"): 2 processes x 1 accumulation step must follow the same loss
curve as 1 process x 2 accumulation steps, since both average the same global batch's gradients. This
catches ranks that silently train alone (accelerate needs ``cpu=True`` to go multi-process on CPU).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_stages import make_project

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_teacher(project: Path, out: Path, nproc: int) -> list[dict]:
    args = [str(REPO / "src" / "04_train_teacher.py"), "--config", str(project), "model=tiny_llama", "fold=0",
            "max_steps=6", "eval_every=3", "lora_dropout=0.0", f"out_dir={out}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"processes={nproc}" in proc.stdout
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_accumulation(tmp_path, tiny_model_dirs):
    project = make_project(tmp_path, tiny_model_dirs)  # global_batch 8, micro_batch 4
    one = run_teacher(project, tmp_path / "one", 1)
    two = run_teacher(project, tmp_path / "two", 2)
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 7))
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
    assert abs(one[-1]["valid_log_loss"] - two[-1]["valid_log_loss"]) < 1e-4
    assert (tmp_path / "two" / "checkpoint" / "random_states_1.pkl").is_file()  # every rank's RNG saved
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["n_valid"] == 48  # gathered, not one shard
