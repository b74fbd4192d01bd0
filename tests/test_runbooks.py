"""Runbooks (issue 9, item 9): -h/--help prints the usage and exits 0; a fold that is not an integer in
[0, n_folds) of the profile is refused before any stage runs. Nothing here starts a stage: a stage
banner ("== [hh:mm:ss] ...") or a created output folder in the output would be a failure."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = ["run_pipeline.sh", "src_fast/run_pipeline_fast.sh", "run_final.sh", "run_data.sh",
            "run_reasoning.sh", "run_tiny.sh"]


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    # The runbooks call `python`: make it this interpreter (the project venv).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["sh", str(ROOT / script), *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PATH": path, "CONFIG": "configs/tiny.yaml", **env})


@pytest.mark.parametrize("script", RUNBOOKS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_exits_0(script, flag):
    res = _run(script, flag)
    assert res.returncode == 0, res.stderr
    assert Path(script).name in res.stdout and "Examples" in res.stdout and "--verbose" in res.stdout
    assert "== [" not in res.stdout + res.stderr  # no stage started


def test_help_after_other_arguments(tmp_path):
    res = _run("run_pipeline.sh", "0", "teacher.lr=2e-5", "--help")
    assert res.returncode == 0 and "run_pipeline.sh <fold>" in res.stdout


@pytest.mark.parametrize("script", ["run_pipeline.sh", "src_fast/run_pipeline_fast.sh"])
@pytest.mark.parametrize("fold, why", [("abc", "must be an integer"), ("-1", "must be an integer"),
                                       ("1.5", "must be an integer"), ("5", "out of range")])
def test_bad_fold_refused_before_any_stage(script, fold, why):
    res = _run(script, fold)
    assert res.returncode == 2
    assert "error: fold" in res.stderr and why in res.stderr and "n_folds 5" in res.stderr
    assert "== " not in res.stdout  # refused before the launcher banner, let alone a stage


def test_fold_range_follows_overrides():
    res = _run("run_pipeline.sh", "3", "common.n_folds=3")
    assert res.returncode == 2 and "n_folds 3" in res.stderr


def test_run_tiny_checks_every_fold_first():
    res = _run("run_tiny.sh", FOLDS="0 7")
    assert res.returncode == 2 and "fold 7 is out of range" in res.stderr
    assert "== " not in res.stdout  # run_data.sh (the first step) never started
