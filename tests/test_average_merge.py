"""Stage 8: fold-adapter averaging against a hand computation, the exact delta option against explicit
weight arithmetic, merged == base + averaged adapter (fp32, 1e-5), idempotence and refusals."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from arena_distill.io import StageInputError, mark_done
from arena_distill.models import add_lora, load_classifier, load_peft, load_tokenizer

STUDENT = "stud"
N_FOLDS = 3
R, ALPHA = 4, 8


def _stage():
    spec = importlib.util.spec_from_file_location("stage08", Path(__file__).resolve().parents[1] / "src" /
                                                  "08_average_merge.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def make_fold_adapters(base: Path, save_dir: Path, processed_dir: Path | None, n_folds: int, student: str,
                       r: int = R, alpha: int = ALPHA, n_dev: int = 6) -> list[Path]:
    """Fold adapters as stage 7 writes them: LoRA (all linear) with random A/B and head, config.yaml naming
    the base, metrics.json, DONE.json; plus each fold's dev.parquet."""
    tok = load_tokenizer(base)
    out = []
    for k in range(n_folds):
        model = load_classifier(base, num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id)
        peft = add_lora(model, r=r, alpha=alpha, dropout=0.0, target_modules=["all-linear"])
        g = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        d = save_dir / f"{student}fold{k}"
        peft.save_pretrained(d)
        (d / "config.yaml").write_text(yaml.safe_dump({"stage": "DistillConfig", "base_model": str(base)}))
        (d / "metrics.json").write_text(json.dumps({"valid_log_loss": 1.0 + k / 10, "valid_accuracy": 0.4,
                                                    "n_valid": n_dev, "best_step": 1}))
        mark_done(d, stage="distill")
        out.append(d)
        if processed_dir is not None:
            rng = np.random.default_rng(k)
            ids = [rng.integers(5, 200, size=int(rng.integers(5, 40))).astype(np.int32).tolist()
                   + [tok.eos_token_id] for _ in range(n_dev)]
            dev = pd.DataFrame({"id": np.arange(n_dev) + 1000 * k, "swap": False,
                                "label": rng.integers(0, 3, n_dev).astype(np.int8), "input_ids": ids,
                                "length": [len(x) for x in ids], "source": "train"})
            (processed_dir / f"{student}fold{k}").mkdir(parents=True, exist_ok=True)
            dev.to_parquet(processed_dir / f"{student}fold{k}" / "dev.parquet", index=False)
    return out


def write_profile(path: Path, tmp: Path, **average) -> Path:
    profile = {"common": {"seed": 1, "n_folds": N_FOLDS, "student": STUDENT, "save_dir": str(tmp / "save"),
                          "processed_dir": str(tmp / "processed"), "model_dir": str(tmp / "models")},
               "average": {"eval_batch": 4, **average}}
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture(scope="module")
def folds(tiny_model_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("avg")
    base = tiny_model_dirs["tiny_llama"]
    dirs = make_fold_adapters(base, tmp / "save", tmp / "processed", N_FOLDS, STUDENT)
    return tmp, base, dirs


@pytest.fixture(scope="module")
def merged_lora_mean(folds):
    tmp, base, _ = folds
    cfg = write_profile(tmp / "p.yaml", tmp)
    report = _stage().main(["--config", str(cfg)])
    return tmp, base, report


def _fold_tensors(dirs):
    return [load_file(str(d / "adapter_model.safetensors")) for d in dirs]


def test_average_matches_hand_computation(folds, merged_lora_mean):
    tmp, _, dirs = folds
    states = _fold_tensors(dirs)
    avg = load_file(str(tmp / "save" / f"{STUDENT}_avg" / "adapter_model.safetensors"))
    assert set(avg) == set(states[0])
    key_a = next(k for k in avg if k.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    key_head = "base_model.model.score.weight"
    for key in (key_a, key_a.replace("lora_A", "lora_B"), key_head):
        hand = (states[0][key] + states[1][key] + states[2][key]) / 3
        torch.testing.assert_close(avg[key], hand, rtol=0, atol=1e-7)
    assert (tmp / "save" / f"{STUDENT}_avg" / "DONE.json").is_file()


def test_merged_equals_base_plus_adapter(folds, merged_lora_mean):
    tmp, base, _ = folds
    merged_dir = tmp / "save" / "final_merged"
    for f in ("config.json", "tokenizer_config.json", "DONE.json", "average_report.json", "metrics.json",
              "heldout_predictions.parquet", "config.yaml"):
        assert (merged_dir / f).is_file(), f
    assert list(merged_dir.glob("*.safetensors"))
    tok = load_tokenizer(base)
    merged = load_classifier(merged_dir, num_labels=3, dtype=torch.float32).eval()
    ref = load_peft(load_classifier(base, num_labels=3, dtype=torch.float32, pad_token_id=tok.pad_token_id),
                    tmp / "save" / f"{STUDENT}_avg").eval()
    enc = tok(["User question: hi there", "a longer row with a few more words in it"], padding=True,
              return_tensors="pt")
    with torch.inference_mode():
        a, b = merged(**enc).logits, ref(**enc).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert merged.config.pad_token_id == tok.pad_token_id


def test_report_compares_methods(merged_lora_mean):
    _, _, report = merged_lora_mean
    assert report["method"] == "lora_mean" and report["lora_layers"] == 14
    assert report["lora_mean"]["n"] == N_FOLDS * 6
    dis = report["disagreement"]
    assert np.isfinite(dis["mean_abs_prob_diff"]) and dis["max_abs_prob_diff"] > 0  # the methods differ
    assert report["max_weight_difference"] > 0


def test_delta_mean_matches_weight_arithmetic(folds, merged_lora_mean):
    tmp, base, dirs = folds
    out = tmp / "save" / "final_delta"
    cfg = write_profile(tmp / "p_delta.yaml", tmp, method="delta_mean", out_dir=str(out),
                        avg_adapter_dir=str(tmp / "save" / "avg_delta"))
    report = _stage().main(["--config", str(cfg)])
    # Both runs score the same rows with both methods: the numbers must agree across runs.
    _, _, first = merged_lora_mean
    for m in ("lora_mean", "delta_mean"):
        assert report[m]["log_loss"] == pytest.approx(first[m]["log_loss"], abs=1e-6)
    states = _fold_tensors(dirs)
    scale = ALPHA / R
    base_model = load_classifier(base, num_labels=3, dtype=torch.float32)
    merged = load_classifier(out, num_labels=3, dtype=torch.float32)
    for mod in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        w0 = dict(base_model.named_parameters())[f"{mod}.weight"].detach()
        deltas = [s[f"base_model.model.{mod}.lora_B.weight"] @ s[f"base_model.model.{mod}.lora_A.weight"]
                  for s in states]
        expected = w0 + scale * (deltas[0] + deltas[1] + deltas[2]) / 3
        got = dict(merged.named_parameters())[f"{mod}.weight"].detach()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # and it is not what the product of the means gives
        mean_b = sum(s[f"base_model.model.{mod}.lora_B.weight"] for s in states) / 3
        mean_a = sum(s[f"base_model.model.{mod}.lora_A.weight"] for s in states) / 3
        assert (got - (w0 + scale * mean_b @ mean_a)).abs().max() > 1e-3
    head = sum(s["base_model.model.score.weight"] for s in states) / 3
    torch.testing.assert_close(merged.score.weight.detach(), head, rtol=0, atol=1e-6)


def test_skips_when_done_and_messages(folds, merged_lora_mean, tmp_path, capsys):
    tmp, base, _ = folds
    cfg = write_profile(tmp / "p.yaml", tmp)
    assert _stage().main(["--config", str(cfg)])["skipped"] is True
    assert "is done with these settings" in capsys.readouterr().out
    # missing fold -> says which script to run first
    empty = write_profile(tmp_path / "p.yaml", tmp_path)
    with pytest.raises(StageInputError, match="run first: sh run_pipeline.sh 0"):
        _stage().main(["--config", str(empty)])
    with pytest.raises(StageInputError, match="run first: sh run_pipeline.sh 5"):
        _stage().main(["--config", str(empty), "folds=[0,5]", f"save_dir={tmp / 'save'}",
                       f"out_dir={tmp_path / 'o'}", f"avg_adapter_dir={tmp_path / 'a'}", "base_model=" + str(base)])


def test_refuses_quantized_base(folds, tmp_path):
    tmp, base, dirs = folds
    qbase = tmp_path / "qbase"
    qbase.mkdir()
    cfg_json = json.loads((base / "config.json").read_text())
    cfg_json["quantization_config"] = {"quant_method": "gptq", "bits": 8}
    (qbase / "config.json").write_text(json.dumps(cfg_json))
    cfg = write_profile(tmp_path / "p.yaml", tmp, base_model=str(qbase), out_dir=str(tmp_path / "out"),
                        avg_adapter_dir=str(tmp_path / "avg"))
    with pytest.raises(StageInputError, match="quantized"):
        _stage().main(["--config", str(cfg)])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_final_then_predict_end_to_end(tiny_model_dirs, tmp_path, repo_root):
    """sh run_final.sh (8 -> 9 -> report) then python predict_test.py on fake fold adapters and sample data:
    a valid submission, an 8-bit model close to the fp one, a report with its diagram; a re-run skips."""
    import os
    import subprocess

    from arena_distill.sample_data import make_sample
    from arena_distill.predict import validate_submission

    data = tmp_path / "data"
    data.mkdir()
    frames, _ = make_sample(n_train=60, n_test=25, n_33k=10, n_ut=10, seed=3)
    for name in ("train", "test", "truth"):
        frames[name].to_csv(data / f"{name}.csv", index=False)
    base = tiny_model_dirs["tiny_gemma2"]
    make_fold_adapters(base, tmp_path / "save", tmp_path / "processed", 2, "tiny_gemma2", n_dev=10)
    overrides = [f"common.data_dir={data}", f"common.save_dir={tmp_path / 'save'}",
                 f"common.processed_dir={tmp_path / 'processed'}", f"common.model_dir={base.parent}",
                 "common.n_folds=2", "common.student=tiny_gemma2", "quantize.n_calibration=16",
                 "quantize.group_size=32", f"report.out={tmp_path / 'docs' / 'cv_report.md'}",
                 f"report.png={tmp_path / 'docs' / 'reliability.png'}",
                 f"report.predict_report={tmp_path / 'sub' / 'predict_report.json'}"]
    env = {**os.environ, "CONFIG": "configs/tiny.yaml", "NGPU": "0"}
    run = subprocess.run(["sh", "run_final.sh", *overrides], cwd=repo_root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    q = json.loads((tmp_path / "save" / "final_model_gptq" / "quant_report.json").read_text())
    assert abs(q["check"]["log_loss_delta"]) < 0.01 and q["check"]["max_abs_prob_diff"] < 0.05
    assert (tmp_path / "docs" / "reliability.png").stat().st_size > 1000
    assert "Full precision vs GPTQ" in (tmp_path / "docs" / "cv_report.md").read_text()
    sub = tmp_path / "sub" / "submission.csv"
    pred = subprocess.run([sys.executable, "predict_test.py", "--config", "configs/tiny.yaml", *overrides,
                           f"predict.out={sub}"], cwd=repo_root, env=env, capture_output=True, text=True)
    assert pred.returncode == 0, pred.stdout[-3000:] + pred.stderr[-3000:]
    assert validate_submission(pd.read_csv(sub), frames["test"]["id"].tolist()) == []
    again = subprocess.run(["sh", "run_final.sh", *overrides], cwd=repo_root, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("skipped") == 2


def test_report_collects_stage_outputs(merged_lora_mean, tmp_path):
    tmp, _, _ = merged_lora_mean
    spec = importlib.util.spec_from_file_location("stage10", Path(__file__).resolve().parents[1] / "src" /
                                                  "10_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    cfg = write_profile(tmp / "p_report.yaml", tmp)
    out, png = tmp_path / "docs" / "cv_report.md", tmp_path / "docs" / "rel.png"
    text = mod.main(["--config", str(cfg), f"out={out}", f"png={png}", f"predict_report={tmp_path / 'none.json'}"])
    assert out.read_text() == text and png.stat().st_size > 1000
    assert "| stud | 1.0000 (0.400)" in text and "lora_mean" in text and "Optimistic" in text
    assert "run `python src/09_quantize.py`" in text and "![reliability diagram](rel.png)" in text
    empty = write_profile(tmp_path / "p.yaml", tmp_path)
    with pytest.raises(StageInputError, match="nothing to report"):
        mod.main(["--config", str(empty), f"out={tmp_path / 'x.md'}", f"png={tmp_path / 'x.png'}",
                  f"predict_report={tmp_path / 'none.json'}"])
