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


SLOW_RANK1 = '''
import os, runpy, sys, time
import accelerate.accelerator as A
original = A.save_accelerator_state
def slow(*args, **kwargs):  # rank 1 writes its RNG state last, as on the CI machine
    if os.environ.get("RANK") == "1":
        time.sleep(2)
    return original(*args, **kwargs)
A.save_accelerator_state = slow
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def test_checkpoint_waits_for_the_slowest_rank(tmp_path, tiny_model_dirs):
    """Regression (CI: rank 1 exited 1 after step 2, rank 0 "Connection closed by peer"): accelerate's save_state
    has no barrier at its end, so rank 0 renamed checkpoint.tmp while rank 1 was still writing
    random_states_1.pkl into it ("Parent directory .../checkpoint.tmp does not exist")."""
    project = make_project(tmp_path, tiny_model_dirs)
    wrapper = tmp_path / "slow_rank1.py"
    wrapper.write_text(SLOW_RANK1)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper),
           str(REPO / "src" / "04_train_teacher.py"), "--config", str(project), "model=tiny_llama", "fold=0",
           "max_steps=2", "eval_every=2", "save_every=1", f"out_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (out / "checkpoint").iterdir()}
