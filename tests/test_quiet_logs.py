"""Quiet by default (issue 9, item 10): what a training stage does at start-up (load a classifier from a
causal-LM folder, add LoRA through peft, which imports GPTQModel; import DeepSpeed as accelerate does)
prints none of the third-party chatter by default, and all of it with -v / ARENA_VERBOSE=1.

Run as subprocesses: the filters act at import time, before the libraries load."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPT = """
import sys
from arena_distill.models import add_lora, load_classifier
model = load_classifier(sys.argv[1], dtype="fp32")
model = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
import deepspeed  # accelerate imports it on the DeepSpeed path
from deepspeed.accelerator import get_accelerator
get_accelerator()
import logging, warnings
logging.getLogger("DeepSpeed").warning("a DeepSpeed warning that matters")
warnings.warn("a user warning that matters")
print("PROJECT LINE")
"""
NOISE = ["Setting accelerator to CPU", "is an Enum subclass", "GPT-QModel", "Python GIL is enabled",
         "LOAD REPORT", "Failed to load", "Auto setting", "is_gradient_checkpointing"]


def _run(model: Path, *args: str) -> str:
    # A new user's environment: none of the switches the test session itself sets.
    env = {k: v for k, v in os.environ.items() if k not in ("ARENA_VERBOSE", "HF_HUB_DISABLE_PROGRESS_BARS",
                                                            "TRANSFORMERS_VERBOSITY")}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(model), *args], capture_output=True, text=True,
                         timeout=300, env={**env, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_third_party_chatter_hidden_unless_verbose(tiny_models_root, mode):
    model = tiny_models_root / "tiny_llama"
    out = _run(model, *(["-v"] if mode == "verbose" else []))
    assert "PROJECT LINE" in out
    assert "a DeepSpeed warning that matters" in out and "a user warning that matters" in out  # kept
    shown = [n for n in NOISE if n in out]
    if mode == "quiet":  # exactly the script's own three lines: no banner, no blank line, no progress bar
        assert shown == [] and len(out.strip().splitlines()) == 3 and "\n\n" not in out, out
    else:  # nothing filtered: the libraries' own lines are back (the machine decides whether torchao's appear)
        assert {"Setting accelerator to CPU", "GPT-QModel", "LOAD REPORT"} <= set(shown), out


def test_load_report_with_unexpected_keys_is_kept():
    from arena_distill.logs import _LoadReportFilter

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, msg, None, None)

    head = "X LOAD REPORT from: m\nKey | Status |\n----+----\n"
    assert not _LoadReportFilter().filter(record(head + "lm_head.weight | UNEXPECTED |\nscore.weight | MISSING |\n"))
    assert _LoadReportFilter().filter(record(head + "model.layers.0.mlp.up_proj.weight | MISSING |\n"))
    assert _LoadReportFilter().filter(record("an unrelated warning"))


def test_verbose_switches(monkeypatch):
    from arena_distill.logs import verbose_requested

    monkeypatch.delenv("ARENA_VERBOSE", raising=False)
    assert not verbose_requested(["fold=0", "teacher.lr=1e-4"])
    assert verbose_requested(["fold=0", "-v"]) and verbose_requested(["--verbose"])
    assert verbose_requested(["verbose=true"]) and verbose_requested(["common.verbose=1"])
    assert not verbose_requested(["verbose=false"])
    monkeypatch.setenv("ARENA_VERBOSE", "1")
    assert verbose_requested([])


def test_config_accepts_verbose_arguments():
    from arena_distill.config import parse_overrides

    _, overrides, _ = parse_overrides(["-v", "--verbose", "verbose=true", "lr=1e-4"])
    assert overrides == {"lr": "1e-4"}
