"""kill -9 in the middle of training, then the same command again: the loss curve and the adapter bytes equal
an uninterrupted run's, for every training stage (3, 4, 7, 22). Slow: real subprocesses, killed with SIGKILL
(nothing is flushed or cleaned up), on CPU where the arithmetic is deterministic.

The kill happens after step 3 is logged; checkpoints are written every 2 steps, so the resumed run restarts
from step 2 and recomputes step 3 (and the log keeps one clean curve).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_engine import add_teacher_logits
from test_logic_flow import _sft_rows
from test_train_stages import make_project

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}


def run(cmd: list[str], log: Path, kill_after_step: int | None = None, timeout: float = 600) -> int:
    """Run ``cmd`` (its own process group); with ``kill_after_step``, SIGKILL the whole group as soon as
    ``log`` has that many rows. Returns the exit status (-9 when killed)."""
    log.parent.parent.mkdir(parents=True, exist_ok=True)
    with open(log.parent.parent / f"{log.parent.name}.stderr", "ab") as err:  # kept for a failing test's report
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_after_step and log.is_file() and len(log.read_text().splitlines()) >= kill_after_step:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def rows(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()]


def kill_and_resume(cmd_for, out_for, keys: tuple[str, ...]) -> None:
    """Straight run vs killed + re-run of the same command: same curve (exactly), same adapter bytes."""
    assert run(cmd_for("a"), out_for("a") / "log.jsonl") == 0
    status = run(cmd_for("b"), out_for("b") / "log.jsonl", kill_after_step=3)
    assert status == -signal.SIGKILL, f"the run ended ({status}) before it could be killed"
    assert not (out_for("b") / "DONE.json").exists()
    assert run(cmd_for("b"), out_for("b") / "log.jsonl") == 0
    a, b = rows(out_for("a") / "log.jsonl"), rows(out_for("b") / "log.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, len(a) + 1))
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    name = "adapter_model.safetensors"
    assert (out_for("a") / name).read_bytes() == (out_for("b") / name).read_bytes()


@pytest.mark.parametrize("stage", ["03_post_pretrain", "04_train_teacher", "07_distill_student"])
def test_kill_9_then_same_command_lmsys_stages(stage, tmp_path, tiny_model_dirs):
    project = make_project(tmp_path, tiny_model_dirs)
    add_teacher_logits(project)
    extra = {"03_post_pretrain": ["model=tiny_llama"], "04_train_teacher": ["model=tiny_llama", "fold=0"],
             "07_distill_student": ["fold=0", "eval_every=4"]}[stage]

    def cmd(tag: str) -> list[str]:
        return [sys.executable, str(REPO_ROOT / "src" / f"{stage}.py"), "--config", str(project), *extra,
                "max_steps=10", "save_every=2", f"out_dir={tmp_path / tag}"]

    keys = ("loss", "ce", "lr", "valid_log_loss")
    if stage.startswith("07"):
        keys += ("kl_tiny_llama", "cos_tiny_qwen2")
    kill_and_resume(cmd, lambda tag: tmp_path / tag, keys)
    if stage != "03_post_pretrain":
        assert (tmp_path / "a" / "oof.csv").read_bytes() == (tmp_path / "b" / "oof.csv").read_bytes()


def test_kill_9_then_same_command_logic_sft(tmp_path, tiny_models_root):
    logic = _sft_rows(tmp_path, n=24)

    def cmd(tag: str) -> list[str]:
        return [sys.executable, str(REPO_ROOT / "src" / "22_logic_sft.py"), "--config",
                str(REPO_ROOT / "configs" / "tiny.yaml"), f"logic_dir={logic}", f"model_dir={tiny_models_root}",
                "base_model=tiny_llama", "max_steps=10", "global_batch=2", "micro_batch=1", "eval_steps=4",
                "save_steps=2", "val_size=0.1", f"save_dir={tmp_path / tag}"]

    kill_and_resume(cmd, lambda tag: tmp_path / tag / "logic_sft", ("loss", "ce", "lr", "eval_loss"))
