"""bench/gpu_check.sh on a CPU: its syntax, its time budget, a dry run (facts + report), the MFU / projection
arithmetic, and its two measurements run end to end on scaled-down Gemma-2 twins (the real run needs a GPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check_bench", REPO / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_script_syntax_and_time_budget() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    limits = [int(x) for x in re.findall(r"^step \w+ (\d+) ", SCRIPT.read_text(), flags=re.M)]
    assert len(limits) == 4 and sum(limits) + 15 <= 8 * 60  # + facts and report


def test_mfu_and_projection_arithmetic(gc) -> None:
    # Gemma-2-9B without embeddings: 9,241,705,984 - 256,000 x 3,584 = 8,324,201,984 weights
    fpt = gc.forward_flops_per_token(8_324_201_984, 42, 16, 256, 2000)
    assert fpt == 2 * 8_324_201_984 + 4 * 42 * 16 * 256 * 2000
    assert gc.mfu(10_000, fpt, 989.0) == pytest.approx(10_000 * fpt / 989e12)
    assert gc.mfu(10_000, fpt, None) is None
    assert gc.projected_hours(25_000, 5.0) == pytest.approx(25_000 * 2 / 5.0 / 3600)
    assert gc.peak_tflops("NVIDIA H200") == 989.0 and gc.peak_tflops("Tesla T4") == 65.0


@pytest.mark.slow
def test_dry_run_writes_a_report(tmp_path) -> None:
    env = {**os.environ, "RESULTS": str(tmp_path), "MD": str(tmp_path / "gpu_check.md")}
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("deepspeed", "pytest_gpu", "gemma_layer", "gemma_full"):
        assert f"== {name} (timeout" in run.stdout
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["dtype_rule"] == "float32" and facts["gptq_kernels"] == ["auto"]  # CPU
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| dtype_rule | float32 |" in md and "| deepspeed | 0 | 0 |" in md


@pytest.mark.slow
def test_measurements_on_scaled_down_twins(gc, tmp_path) -> None:
    layer = gc.main(["gemma_layer", "--hidden", "64", "--rows", "2", "--length", "48", "--calib-rows", "4",
                     "--work", str(tmp_path / "w"), "--out", str(tmp_path / "gemma_layer.json")])
    assert [r["dtype"] for r in layer["runs"]] == ["fp16", "bf16"]
    assert all(r["ok"] and r["finite"] and r["kernel"] == "TorchLinear" for r in layer["runs"])
    full = gc.main(["gemma_full", "--hidden", "64", "--layers", "2", "--rows", "4", "--batch", "2", "--length", "48",
                    "--out", str(tmp_path / "gemma_full.json")])
    assert full["finite"] and full["rows"] == 4 and full["rows_per_s"] > 0
    text = gc.main(["report", "--results", str(tmp_path), "--md", str(tmp_path / "r.md")])
    assert "Real-width 1-layer Gemma-2" in text and "projected_hours_25k_tta_at_full_length" in text
