"""The training engine (arena_distill.engine) through the stages that use it, plus its building blocks.

Batch plan (longest first, deterministic), fp32 trainables under a bf16 base, non-reentrant gradient
checkpointing, the global-batch assertion, the teacher schedule of the seed (2-epoch cosine cut after 1,
last step kept), out-of-fold files, TensorBoard tracking, progress lines, and resume for stages 3 and 7.
"""
from __future__ import annotations

import json
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import load_stage
from test_train_stages import make_project, read_log

from arena_distill.batching import length_grouped_batches
from arena_distill.oof import OOF_COLUMNS


@pytest.fixture()
def project(tmp_path, tiny_model_dirs):
    return make_project(tmp_path, tiny_model_dirs)


def add_teacher_logits(project, fold: int = 0) -> None:
    """Synthetic logits_<teacher> columns on the student's fold data (stage 7 without running 4-6)."""
    path = project.parent / "processed" / f"tiny_gemma2fold{fold}" / "train.parquet"
    frame = pd.read_parquet(path)
    rng = np.random.default_rng(5)
    for t in ("tiny_llama", "tiny_qwen2"):
        frame[f"logits_{t}"] = list(rng.normal(0, 1.5, (len(frame), 3)).astype(np.float32))
    frame.to_parquet(path, index=False)


# ------------------------------------------------------------------------------------------- batch plan
def test_longest_batch_first_and_deterministic():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1000)
    plain = length_grouped_batches(lengths, 8, seed=3, epoch=1)
    first = length_grouped_batches(lengths, 8, seed=3, epoch=1, longest_first=True)
    tokens = [len(b) * int(lengths[b].max()) for b in first]
    assert tokens[0] == max(tokens)
    assert sorted(map(tuple, plain)) == sorted(map(tuple, first))  # same batches, one moved to the front
    again = length_grouped_batches(lengths, 8, seed=3, epoch=1, longest_first=True)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = length_grouped_batches(lengths, 8, seed=3, epoch=2, longest_first=True)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_training_starts_with_the_longest_batch(project, monkeypatch):
    """The engine's first forward pass gets the longest micro-batch of the epoch."""
    from arena_distill import engine

    seen: list[int] = []
    real = engine.batch_plan

    def spy(lengths, plan, seed, epoch):
        batches = real(lengths, plan, seed, epoch)
        seen.append(max(len(b) * max(lengths[i] for i in b) for b in batches))
        seen.append(len(batches[0]) * max(lengths[i] for i in batches[0]))
        return batches

    monkeypatch.setattr(engine, "batch_plan", spy)
    load_stage("04_train_teacher.py").main(["--config", str(project), "model=tiny_llama", "fold=0", "max_steps=1"])
    assert seen[0] == seen[1]


# ------------------------------------------------------------------------------------- fp32 trainables
def test_bf16_base_gets_fp32_trainables_and_the_head_moves(tiny_model_dirs):
    from arena_distill.models import add_lora, load_classifier, load_tokenizer

    base = tiny_model_dirs["tiny_llama"]
    tok = load_tokenizer(base)
    model = add_lora(load_classifier(base, dtype="bf16", pad_token_id=tok.pad_token_id), r=4, alpha=8, dropout=0.0,
                     target_modules=["all-linear"])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base stays bf16
    head = [p for n, p in trainable.items() if "score" in n][0]
    before = head.detach().clone()
    opt = torch.optim.AdamW(trainable.values(), lr=5e-5)
    ids = torch.randint(20, 200, (4, 16))
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # no autocast: the hook casts
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    # In bf16 most of these 5e-5-sized updates round away; in fp32 every element moves.
    assert (head.detach() != before).float().mean() > 0.99


@pytest.mark.parametrize("kbit", [False, True])
def test_gradient_checkpointing_is_non_reentrant(tiny_model_dirs, kbit):
    from arena_distill.models import add_lora, load_classifier

    model = load_classifier(tiny_model_dirs["tiny_qwen2"])
    if kbit:  # the QLoRA branch (peft prepare_model_for_kbit_training) without needing bitsandbytes weights
        model.is_loaded_in_4bit = True
    model = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"], gradient_checkpointing=True)
    funcs = [m._gradient_checkpointing_func for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert funcs and all(f.keywords.get("use_reentrant") is False for f in funcs)


def test_global_batch_mismatch_is_refused():
    from accelerate.utils import DistributedType
    from arena_distill.train_utils import check_global_batch

    acc = types.SimpleNamespace(num_processes=1, gradient_accumulation_steps=2, distributed_type=DistributedType.NO)
    check_global_batch(acc, 8, 4, 2)
    acc.gradient_accumulation_steps = 1  # e.g. ACCELERATE_GRADIENT_ACCUMULATION_STEPS won
    with pytest.raises(RuntimeError, match="global batch is not 8"):
        check_global_batch(acc, 8, 4, 2)
    ds = types.SimpleNamespace(num_processes=2, gradient_accumulation_steps=1,
                               distributed_type=DistributedType.DEEPSPEED,
                               deepspeed_config={"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 4,
                                                 "train_batch_size": 32})
    with pytest.raises(RuntimeError, match="DeepSpeed accumulation 4"):
        check_global_batch(ds, 8, 4, 1)


# --------------------------------------------------------------------------------- teacher schedule, OOF
def _check_oof(out, dev, step):
    oof = pd.read_csv(out / "oof.csv")
    assert list(oof.columns) == OOF_COLUMNS
    assert oof["id"].tolist() == dev["id"].tolist() and oof["label"].tolist() == dev["label"].tolist()
    probs = oof[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0) and (probs > 0).all()
    assert (oof["step"] == step).all()
    return oof


def test_teacher_seed_schedule_keeps_the_last_step(project):
    teacher = load_stage("04_train_teacher.py")
    out = project.parent / "seed"
    summary = teacher.main(["--config", str(project), "model=tiny_llama", "fold=0", "epochs=2", "epochs_run=1",
                            "logits_from=last", "eval_every=2", "warmup_steps=0", f"out_dir={out}"])
    log = read_log(out / "log.jsonl")
    steps_per_epoch = summary["total_steps"] // 2
    assert summary["stop_step"] == steps_per_epoch == len(log) and summary["kept_step"] == steps_per_epoch
    # The cosine is planned over 2 epochs: where training stops, the lr is still at the half-way value.
    assert log[-1]["lr"] == pytest.approx(5e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert summary["valid_log_loss"] == summary["last_valid_log_loss"] == log[-1]["valid_log_loss"]
    assert (out / "adapter_model.safetensors").read_bytes() == (out / "last" / "adapter_model.safetensors").read_bytes()
    dev = pd.read_parquet(project.parent / "processed" / "tiny_llamafold0" / "dev.parquet")
    oof = _check_oof(out, dev, steps_per_epoch)
    from arena_distill.metrics import log_loss
    assert log_loss(oof[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), oof["label"].to_numpy()) == \
        pytest.approx(summary["valid_log_loss"], abs=1e-6)


def test_teacher_best_variant_keeps_the_best_checkpoint(project):
    teacher = load_stage("04_train_teacher.py")
    out = project.parent / "best"
    summary = teacher.main(["--config", str(project), "model=tiny_llama", "fold=0", "epochs=2", "epochs_run=-1",
                            "logits_from=best", "eval_every=2", f"out_dir={out}"])
    log = read_log(out / "log.jsonl")
    assert len(log) == summary["total_steps"] == summary["stop_step"]
    evals = [r for r in log if "valid_log_loss" in r]
    best = min(evals, key=lambda r: r["valid_log_loss"])
    assert summary["kept_step"] == summary["best_step"] == best["step"]
    assert (out / "adapter_model.safetensors").read_bytes() == (out / "best" / "adapter_model.safetensors").read_bytes()
    _check_oof(out, pd.read_parquet(project.parent / "processed" / "tiny_llamafold0" / "dev.parquet"), best["step"])


def test_profiles_reproduce_the_seed_teacher_schedule(repo_root):
    import yaml

    for name in ("a100x8.yaml", "tiny.yaml"):
        teacher = yaml.safe_load((repo_root / "configs" / name).read_text())["teacher"]
        assert (teacher["epochs"], teacher["epochs_run"], teacher["logits_from"]) == (2, 1, "last"), name


# ------------------------------------------------------------------------------- stage 7: oof, resume
def test_distill_resume_and_oof(project):
    add_teacher_logits(project)
    distill = load_stage("07_distill_student.py")
    args = ["--config", str(project), "fold=0", "max_steps=6", "eval_every=3", "save_every=2"]
    straight = distill.main(args + [f"out_dir={project.parent / 'a'}"])
    stopped = distill.main(args + [f"out_dir={project.parent / 'b'}", "stop_after=3"])
    assert stopped["stopped"] and stopped["step"] == 3
    distill.main(args + [f"out_dir={project.parent / 'b'}"])
    a, b = read_log(project.parent / "a" / "log.jsonl"), read_log(project.parent / "b" / "log.jsonl")
    keys = ("step", "loss", "ce", "kl_tiny_llama", "cos_tiny_qwen2", "lr", "valid_log_loss")
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    for name in ("adapter_model.safetensors", "oof.csv", "last/adapter_model.safetensors"):
        assert (project.parent / "a" / name).read_bytes() == (project.parent / "b" / name).read_bytes(), name
    dev = pd.read_parquet(project.parent / "processed" / "tiny_gemma2fold0" / "dev.parquet")
    _check_oof(project.parent / "a", dev, straight["best_step"])


def test_post_pretrain_resume_gives_the_same_adapter(project):
    stage = load_stage("03_post_pretrain.py")
    args = ["--config", str(project), "model=tiny_qwen2", "save_every=1"]
    stage.main(args + [f"out_dir={project.parent / 'a'}"])
    assert stage.main(args + [f"out_dir={project.parent / 'b'}", "stop_after=2"])["stopped"]
    stage.main(args + [f"out_dir={project.parent / 'b'}"])
    a, b = read_log(project.parent / "a" / "log.jsonl"), read_log(project.parent / "b" / "log.jsonl")
    assert [(r["step"], r["loss"]) for r in a] == [(r["step"], r["loss"]) for r in b]
    wa = load_file(str(project.parent / "a" / "adapter_model.safetensors"))
    wb = load_file(str(project.parent / "b" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------- tracking and progress
def test_tensorboard_scalars_and_progress_lines(project, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = project.parent / "tb"
    load_stage("04_train_teacher.py").main(["--config", str(project), "model=tiny_llama", "fold=0", "max_steps=4",
                                            "eval_every=2", "report_to=tensorboard", f"out_dir={out}"])
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"loss", "ce", "lr", "valid_log_loss", "eta_s"} <= set(acc.Tags()["scalars"])
    log = read_log(out / "log.jsonl")
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert [e.step for e in acc.Scalars("valid_log_loss")] == [2, 4]
    # JSONL keys kept, elapsed/ETA added; every step line shows them.
    assert {"step", "loss", "ce", "lr", "dt", "tok_s", "epoch", "elapsed_s", "eta_s"} <= set(log[0])
    assert log[-1]["eta_s"] == 0 and all(r["elapsed_s"] >= 0 for r in log)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert len(lines) == 4 and all(" elapsed " in x and " eta " in x for x in lines)


def test_report_to_is_checked(project, stage_module):
    import yaml
    from arena_distill import config as C

    profile = yaml.safe_load(project.read_text())
    cls = stage_module("04_train_teacher").TeacherConfig
    built = C.build_config(cls, "teacher", profile, {"model": "m", "report_to": "tensorboard"})
    assert built.report_to == "tensorboard"
    with pytest.raises(C.ConfigError, match="report_to"):
        C.build_config(cls, "teacher", profile, {"model": "m", "report_to": "comet"})


def test_tqdm_bar_when_stdout_is_a_terminal(tmp_path, monkeypatch, capsys):
    import sys

    from arena_distill.train_utils import StepLogger

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    logger = StepLogger(tmp_path / "log.jsonl", total_steps=4, start_step=1)
    assert logger.bar is not None and logger.bar.n == 1  # a resumed run's bar starts at its step
    logger.log(2, 1.0, {"ce": 1.0}, 1e-3, 100)
    assert logger.bar.n == 2
    logger.close()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert StepLogger(tmp_path / "other.jsonl", total_steps=4).bar is None  # logs and pipes get plain lines
    assert "eta 0:00:0" in capsys.readouterr().out


def test_tensorboard_after_a_resume_shows_each_step_once(project):
    """Killed after logging step 3 with the last checkpoint at step 2 (simulated: the step-3 row is logged, the
    checkpoint is the one of step 2): the resumed run recomputes step 3, TensorBoard keeps one value per step."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher = load_stage("04_train_teacher.py")
    out = project.parent / "tbr"
    args = ["--config", str(project), "model=tiny_llama", "fold=0", "max_steps=4", "eval_every=100",
            "save_every=2", "report_to=tensorboard", f"out_dir={out}"]
    teacher.main(args + ["stop_after=2"])  # checkpoint at 2
    shutil.copytree(out / "checkpoint", project.parent / "ckpt2")
    teacher.main(args + ["stop_after=1"])  # logs step 3 (and writes a checkpoint at 3) ...
    shutil.rmtree(out / "checkpoint")
    shutil.copytree(project.parent / "ckpt2", out / "checkpoint")  # ... which the "kill" never wrote
    teacher.main(args)
    acc = EventAccumulator(str(out / "tensorboard" / "teacher"))  # the run's folder (hparams go to subfolders)
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss")]
    assert steps == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in read_log(out / "log.jsonl")],
                                                                   rel=1e-6)
