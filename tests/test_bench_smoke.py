"""Smoke test of the benchmark (bench/run.py) on its minute configuration.

Keeps the script working; asserts only that the table and the JSON are written with finite numbers, never
anything about speed (timings are noisy; the benchmark itself is not part of the suite). Runs in a
subprocess: the benchmark sets its own thread count and OpenMP wait policy, which must not leak into the
test session. Sample data and the tiny model are generated into the test's temporary folder.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO_ROOT


def _finite_numbers(obj, path="") -> list[tuple[str, float]]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [(path, float(obj))]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _finite_numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _finite_numbers(v, f"{path}[{i}]")]
    return []


def test_bench_smoke_writes_table_and_json(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--preset", "smoke", "--out-dir", str(out),
           "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(tmp_path / "no_data"), "--name", "smoke"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    table = (out / "smoke.md").read_text()
    assert "| measure | ours | naive |" in table
    for row in ("prediction rows/s", "prediction padding efficiency", "training real tokens/s", "peak RSS"):
        assert row in table, row
    assert proc.stdout.strip().endswith(table.strip().splitlines()[-1])  # the table is printed last

    res = json.loads((out / "smoke.json").read_text())
    for key in ("rows_per_s", "real_tokens_per_s", "peak_bytes"):
        for path in ("ours", "naive"):
            assert math.isfinite(res["predict"][path][key]) and res["predict"][path][key] > 0
    for path in ("ours", "naive"):
        assert 0 < res["predict"]["padding_efficiency"][path] <= 1
    for path in ("ours", "hf_group", "naive"):
        assert math.isfinite(res["train"][path]["real_tokens_per_s"]) and res["train"][path]["real_tokens_per_s"] > 0
        assert math.isfinite(res["train"][path]["real_tokens_per_cpu_s"]) and res["train"][path]["cpu_seconds"] > 0
        assert 0 < res["train"]["padding_efficiency"][path] <= 1
    assert "| measure | ours | HF Trainer group_by_length | naive (max_length pad) |" in table
    assert set(res["targets"]) >= {"train_tokens_per_s_vs_hf_group", "train_padding_efficiency",
                                   "train_memory_vs_hf_group"}
    assert {"512/48", "2000/20000"} <= set(res["train"]["plan_padding"])
    assert math.isfinite(res["predict"]["rows_per_s_ratio"]) and math.isfinite(res["train"]["real_tokens_per_s_ratio"])
    assert res["predict"]["max_abs_prob_diff"] < 1e-4  # both prediction paths compute the same probabilities
    bad = [(p, v) for p, v in _finite_numbers(res) if not math.isfinite(v)]
    assert not bad, bad
