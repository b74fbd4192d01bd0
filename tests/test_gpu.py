"""CUDA paths: nf4 QLoRA teacher training, bf16 mixed-precision distillation, GPTQ 8-bit prediction.

Marked ``gpu`` (deselected by default) and skipped without CUDA. Run on a GPU box with
``python -m pytest -q -m gpu``. The same stages run on CPU in tests/test_train_stages.py and
tests/test_quant.py; these check what only a GPU exercises (bitsandbytes CUDA kernels, bf16 autocast,
GPTQ CUDA kernels).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import load_stage
from test_train_stages import make_project

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_qlora_nf4_teacher_trains_and_saves(tmp_path, tiny_model_dirs):
    project = make_project(tmp_path, tiny_model_dirs)
    summary = load_stage("04_train_teacher.py").main(
        ["--config", str(project), "model=tiny_llama", "fold=0", "quant=nf4", "max_steps=6"])
    assert math.isfinite(summary["valid_log_loss"])
    weights = load_file(str(tmp_path / "save" / "tiny_llamafold0" / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_bf16_autocast_distillation(tmp_path, tiny_model_dirs):
    from arena_distill.dist import pick_dtype

    # By compute capability, not torch.cuda.is_bf16_supported() (True on a T4 through emulation).
    major, _ = torch.cuda.get_device_capability()
    assert pick_dtype("auto") == (torch.bfloat16 if major >= 8 else torch.float16)
    project = make_project(tmp_path, tiny_model_dirs)
    cfg = ["--config", str(project)]
    for t in ("tiny_llama", "tiny_qwen2"):
        load_stage("04_train_teacher.py").main(cfg + [f"model={t}", "fold=0", "max_steps=3"])
        load_stage("05_teacher_logits.py").main(cfg + [f"model={t}", "fold=0"])
    load_stage("06_merge_logits.py").main(cfg + ["fold=0"])
    load_stage("07_distill_student.py").main(cfg + ["fold=0", "max_steps=4", "mixed_precision=auto"])
    log = [json.loads(x) for x in (tmp_path / "save" / "tiny_gemma2fold0" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log)


def test_gptq_8bit_predicts_close_to_fp_on_cuda(tmp_path, tiny_model_dirs):
    from arena_distill.metrics import softmax
    from arena_distill.models import load_classifier, load_tokenizer
    from arena_distill.predict import load_for_prediction
    from arena_distill.quant import quantize_classifier
    from arena_distill.scoring import score_classifier

    base = tiny_model_dirs["tiny_llama"]
    tok = load_tokenizer(base)
    torch.manual_seed(0)
    fp = load_classifier(base, dtype=torch.float32, pad_token_id=tok.pad_token_id)
    fp.save_pretrained(tmp_path / "fp")
    tok.save_pretrained(tmp_path / "fp")
    rng = np.random.default_rng(0)
    rows = [rng.integers(20, 900, size=int(n)).tolist() for n in rng.integers(8, 64, size=64)]
    quantize_classifier(tmp_path / "fp", tmp_path / "q8", rows[:32], tok, bits=8, group_size=32, max_length=64)
    device = torch.device("cuda")
    probs = {}
    for kind, folder in (("merged", tmp_path / "fp"), ("gptq", tmp_path / "q8")):
        model, tokenizer = load_for_prediction(kind, folder, device=device)
        _, logits, _ = score_classifier(model, rows, tokenizer.pad_token_id, batch_size=16, device=device,
                                        progress=False)
        probs[kind] = softmax(logits)
    assert np.abs(probs["merged"] - probs["gptq"]).max() < 0.05


def test_deepspeed_zero2_qlora_teacher_step(tmp_path, tiny_model_dirs):
    """One process under accelerate + DeepSpeed ZeRO-2 (the production launcher config): nf4 QLoRA teacher
    with gradient checkpointing, two optimizer steps; the adapter is saved, finite, and LoRA B has moved."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    project = make_project(tmp_path, tiny_model_dirs)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO_ROOT / "configs" / "accelerate" / "zero2.yaml"), "--num_processes", "1",
           str(REPO_ROOT / "src" / "04_train_teacher.py"), "--config", str(project), "model=tiny_llama", "fold=0",
           "quant=nf4", "gradient_checkpointing=true", "max_steps=2", "eval_every=2"]
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    weights = load_file(str(tmp_path / "save" / "tiny_llamafold0" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
