"""Training stages 3-7 run through their real main() on temp folders with tiny models and synthetic folds.

The fold data here is written directly in the processed-parquet contract (docs/architecture.md) with a
learnable rule (a marker token decides the label), so these tests do not depend on the data stage.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from conftest import load_stage


def _rows(rng: np.random.Generator, n: int, start_id: int, swap_copies: bool) -> pd.DataFrame:
    records = []
    for i in range(n):
        label = int(rng.integers(0, 3))
        ids = rng.integers(20, 200, size=int(rng.integers(8, 40))).tolist()
        ids[int(rng.integers(0, len(ids)))] = (10, 11, 12)[label]  # the learnable marker
        records.append({"source": "train", "id": start_id + i, "swap": False, "label": label, "input_ids": ids})
        if swap_copies:
            sw = {0: 1, 1: 0, 2: 2}[label]
            ids2 = [{10: 11, 11: 10}.get(t, t) for t in ids]
            records.append({"source": "train", "id": start_id + i, "swap": True, "label": sw, "input_ids": ids2})
    df = pd.DataFrame(records)
    df["length"] = df["input_ids"].map(len).astype("int32")
    df["label"] = df["label"].astype("int8")
    return df


def make_project(tmp: Path, model_dirs: dict[str, Path], n_folds: int = 2, n_per_fold: int = 48) -> Path:
    """Processed folds for every model + a profile YAML; returns the YAML path."""
    rng = np.random.default_rng(0)
    folds = [_rows(rng, n_per_fold, 1000 * (k + 1), swap_copies=True) for k in range(n_folds)]
    processed = tmp / "processed"
    for name in model_dirs:
        for k in range(n_folds):
            d = processed / f"{name}fold{k}"
            d.mkdir(parents=True)
            pd.concat([f for j, f in enumerate(folds) if j != k]).to_parquet(d / "train.parquet", index=False)
            folds[k][~folds[k]["swap"]].to_parquet(d / "dev.parquet", index=False)
            (d / "DONE.json").write_text("{}")
        ut = processed / f"{name}_ut"
        ut.mkdir()
        _rows(rng, 32, 90000, swap_copies=False).assign(source="ut").to_parquet(ut / "train.parquet", index=False)
        (ut / "DONE.json").write_text("{}")
    pd.DataFrame([{"id": i, "fold": k} for k, f in enumerate(folds) for i in sorted(set(f["id"]))]).to_csv(
        tmp / "folds.csv", index=False)
    train_cfg = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "lr": 5e-3, "epochs": 1.0,
                 "global_batch": 8, "micro_batch": 4, "warmup_steps": 2, "save_every": 2}
    profile = {
        "common": {"seed": 11, "n_folds": n_folds, "processed_dir": str(processed),
                   "model_dir": str(next(iter(model_dirs.values())).parent), "save_dir": str(tmp / "save"),
                   "teachers": ["tiny_llama", "tiny_qwen2"], "student": "tiny_gemma2"},
        "post_pretrain": dict(train_cfg),
        "teacher": {**train_cfg, "eval_every": 5, "eval_batch": 16},
        "logits": {"batch_size": 16, "out_dir": str(tmp / "oof"), "folds_csv": str(tmp / "folds.csv")},
        "merge_logits": {"logits_dir": str(tmp / "oof")},
        "distill": {**train_cfg, "eval_every": 5, "eval_batch": 16, "attn_implementation": "eager"},
    }
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture()
def project(tmp_path, tiny_model_dirs):
    return make_project(tmp_path, tiny_model_dirs)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_teacher_stage_outputs_and_learning(project, tiny_model_dirs):
    teacher = load_stage("04_train_teacher.py")
    summary = teacher.main(["--config", str(project), "model=tiny_llama", "fold=0", "epochs=3"])
    out = project.parent / "save" / "tiny_llamafold0"
    for name in ("adapter_model.safetensors", "adapter_config.json", "metrics.json", "log.jsonl", "config.yaml",
                 "DONE.json", "last/adapter_model.safetensors", "checkpoint/loop_state.json"):
        assert (out / name).is_file(), name
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, summary["total_steps"] + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["ce"]) for r in log)
    # LoRA B starts at zero and the score head is saved: both must have moved.
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    assert any("score" in k for k in weights)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valid_log_loss"] < metrics["prior_log_loss"]  # the marker rule is learnable
    assert (project.parent / "save" / "cv_table.md").read_text().count("tiny_llama") == 1
    # Idempotent: a second run is skipped.
    assert teacher.main(["--config", str(project), "model=tiny_llama", "fold=0", "epochs=3"])["skipped"]


def test_base_weights_unchanged_and_adapter_reloads(project, tiny_model_dirs):
    import torch
    from arena_distill.models import load_classifier, load_peft, load_tokenizer

    load_stage("04_train_teacher.py").main(["--config", str(project), "model=tiny_qwen2", "fold=0", "max_steps=4"])
    out = project.parent / "save" / "tiny_qwen2fold0"
    base_dir = tiny_model_dirs["tiny_qwen2"]
    tok = load_tokenizer(base_dir)
    torch.manual_seed(0)
    plain = load_classifier(base_dir, pad_token_id=tok.pad_token_id)
    base_state = {k: v.clone() for k, v in plain.state_dict().items() if "score" not in k}
    torch.manual_seed(0)
    wrapped = load_peft(load_classifier(base_dir, pad_token_id=tok.pad_token_id), out)
    merged = wrapped.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if k in base_state and not torch.equal(v, base_state[k])]
    assert changed, "merging the trained adapter must change some linear weights"
    unwrapped = load_peft(load_classifier(base_dir, pad_token_id=tok.pad_token_id), out)
    for name, p in unwrapped.base_model.model.named_parameters():
        key = name.replace(".base_layer", "")
        if "lora_" not in name and "score" not in name and key in base_state:
            assert torch.equal(p, base_state[key]), name


def test_resume_gives_the_uninterrupted_curve(project):
    teacher = load_stage("04_train_teacher.py")
    args = ["--config", str(project), "model=tiny_llama", "fold=1", "max_steps=8", "eval_every=100"]
    teacher.main(args + ["out_dir=" + str(project.parent / "straight")])
    straight = read_log(project.parent / "straight" / "log.jsonl")
    resumed_dir = "out_dir=" + str(project.parent / "resumed")
    stopped = teacher.main(args + [resumed_dir, "stop_after=3"])
    assert stopped["stopped"] and stopped["step"] == 3
    assert not (project.parent / "resumed" / "DONE.json").exists()
    teacher.main(args + [resumed_dir])  # same command again: continues from step 3 (checkpoint at 3)
    resumed = read_log(project.parent / "resumed" / "log.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    a = load_file(str(project.parent / "straight" / "adapter_model.safetensors"))
    b = load_file(str(project.parent / "resumed" / "adapter_model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_post_pretrain_seeds_fold_training_without_head(project):
    load_stage("03_post_pretrain.py").main(["--config", str(project), "model=tiny_llama"])
    ut = project.parent / "save" / "tiny_llama_ut"
    assert (ut / "DONE.json").is_file() and (ut / "adapter_model.safetensors").is_file()
    summary = load_stage("04_train_teacher.py").main(
        ["--config", str(project), "model=tiny_llama", "fold=0", "max_steps=2"])
    assert summary["init_adapter"] == str(ut)


def test_logits_merge_distill_and_oof(project):
    teacher, logits = load_stage("04_train_teacher.py"), load_stage("05_teacher_logits.py")
    merge, distill = load_stage("06_merge_logits.py"), load_stage("07_distill_student.py")
    cfg = ["--config", str(project)]
    for t in ("tiny_llama", "tiny_qwen2"):
        for k in (0, 1):
            teacher.main(cfg + [f"model={t}", f"fold={k}", "max_steps=3"])
    logits.main(cfg + ["model=tiny_llama", "fold=0"])
    report = logits.main(cfg + ["model=tiny_qwen2", "fold=0", "mode=oof"])
    oof_dir = project.parent / "oof"
    student_rows = pd.read_parquet(project.parent / "processed" / "tiny_gemma2fold0" / "train.parquet")
    for t in ("tiny_llama", "tiny_qwen2"):
        table = pd.read_parquet(oof_dir / f"{t}fold0.parquet")
        assert len(table) == len(student_rows) and not table.duplicated(["source", "id", "swap"]).any()
        assert set(map(tuple, table[["source", "id", "swap"]].to_numpy())) == \
            set(map(tuple, student_rows[["source", "id", "swap"]].to_numpy()))
        assert np.isfinite(table[["logit_0", "logit_1", "logit_2"]].to_numpy()).all()
    in_sample = pd.read_parquet(oof_dir / "tiny_llamafold0.parquet")
    assert (in_sample["scored_by_fold"] == 0).all()
    assert report["out_of_fold_rows"] == len(student_rows) and report["in_sample_rows"] == 0
    assert (pd.read_parquet(oof_dir / "tiny_qwen2fold0.parquet")["scored_by_fold"] == 1).all()

    merge.main(cfg + ["fold=0"])
    merged = pd.read_parquet(project.parent / "processed" / "tiny_gemma2fold0" / "train.parquet")
    assert {"logits_tiny_llama", "logits_tiny_qwen2"} <= set(merged.columns) and len(merged) == len(student_rows)
    assert merge.main(cfg + ["fold=0"])["skipped"]

    summary = distill.main(cfg + ["fold=0", "max_steps=4"])
    log = read_log(project.parent / "save" / "tiny_gemma2fold0" / "log.jsonl")
    for key in ("ce", "kl_tiny_llama", "cos_tiny_llama", "kl_tiny_qwen2", "cos_tiny_qwen2"):
        assert all(math.isfinite(r[key]) for r in log), key
    assert all(math.isclose(r["loss"], (r["ce"] + r["kl_tiny_llama"] + r["cos_tiny_llama"] + r["kl_tiny_qwen2"]
                                        + r["cos_tiny_qwen2"]) / 5, rel_tol=1e-4) for r in log)
    assert summary["teachers"] == ["tiny_llama", "tiny_qwen2"]


def test_nan_logits_are_refused_and_nothing_written(project):
    from arena_distill.io import StageInputError

    oof = project.parent / "oof"
    oof.mkdir()
    rows = pd.read_parquet(project.parent / "processed" / "tiny_gemma2fold0" / "train.parquet")
    table = rows[["source", "id", "swap"]].assign(logit_0=0.0, logit_1=1.0, logit_2=np.nan)
    for t in ("tiny_llama", "tiny_qwen2"):
        table.to_parquet(oof / f"{t}fold0.parquet", index=False)
    before = (project.parent / "processed" / "tiny_gemma2fold0" / "train.parquet").read_bytes()
    with pytest.raises(StageInputError, match="NaN/inf"):
        load_stage("06_merge_logits.py").main(["--config", str(project), "fold=0"])
    assert (project.parent / "processed" / "tiny_gemma2fold0" / "train.parquet").read_bytes() == before
    # A missing row is refused too.
    table.fillna(0.0).iloc[1:].to_parquet(oof / "tiny_llamafold0.parquet", index=False)
    table.fillna(0.0).to_parquet(oof / "tiny_qwen2fold0.parquet", index=False)
    with pytest.raises(StageInputError, match="no logits for 1 of"):
        load_stage("06_merge_logits.py").main(["--config", str(project), "fold=0"])


def test_distill_without_logits_says_what_to_run(project):
    from arena_distill.io import StageInputError

    with pytest.raises(StageInputError, match="05_teacher_logits.py"):
        load_stage("07_distill_student.py").main(["--config", str(project), "fold=0", "max_steps=1"])


def test_teacher_missing_data_says_run_data(tmp_path, tiny_model_dirs):
    from arena_distill.io import StageInputError

    project = make_project(tmp_path, tiny_model_dirs)
    import shutil
    shutil.rmtree(tmp_path / "processed" / "tiny_llamafold0")
    with pytest.raises(StageInputError, match="run_data.sh"):
        load_stage("04_train_teacher.py").main(["--config", str(project), "model=tiny_llama", "fold=0"])
