"""Stale outputs (issue 9, item 8): a finished stage re-run with other settings names the changed keys
and stops; the same settings skip; force redoes; a marker from before fingerprints skips with a warning.

The stage-level tests stop each stage at its done-check (a spy on ``check_done``), so no model runs:
they prove every stage with a skip block computes a fingerprint and routes it through ``check_done``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from arena_distill import io as aio
from arena_distill.io import StageInputError, check_done, fingerprint, fingerprint_diff, mark_done, read_done

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


@dataclasses.dataclass
class _Cfg:
    lr: float = 1e-4
    betas: tuple = (0.9, 0.95)
    force: bool = False
    save_every: int = 50
    out_dir: str = "x"
    eval_batch: int = 8


def test_fingerprint_drops_run_only_and_excluded_keys():
    fp = fingerprint(_Cfg(), exclude=("eval_batch",))
    assert fp == {"lr": 1e-4, "betas": [0.9, 0.95]}  # tuples stored as JSON lists, so a re-read compares equal


def test_fingerprint_never_stores_secrets():
    @dataclasses.dataclass
    class Gen:
        api_key: str = "sk-123"
        hf_token: str = "hf_abc"
        max_new_tokens: int = 64
        backend_overrides: dict = dataclasses.field(default_factory=lambda: {"api_key": "x", "concurrency": 4})

    fp = fingerprint(Gen())
    assert fp == {"max_new_tokens": 64, "backend_overrides": {"concurrency": 4}}


def test_diff_ignores_keys_an_older_run_did_not_record():
    assert fingerprint_diff({"lr": 1.0}, {"lr": 1.0, "new_key": 3}) == {}
    assert fingerprint_diff({"lr": 1.0, "gone": 2}, {"lr": 2.0}) == {"lr": (1.0, 2.0)}


def test_check_done_same_changed_force_legacy(tmp_path, capsys):
    out = tmp_path / "run"
    fp = fingerprint(_Cfg())
    assert check_done(out, fp, False, "s") is False  # nothing there yet
    mark_done(out, fingerprint=fp, stage="s")
    assert read_done(out)["fingerprint"] == fp
    assert check_done(out, fp, False, "s") is True
    assert "is done with these settings: skipped" in capsys.readouterr().out
    assert check_done(out, fingerprint(_Cfg(save_every=7, force=True)), False, "s") is True  # run-only keys
    new = fingerprint(_Cfg(lr=2e-5))
    with pytest.raises(StageInputError) as err:
        check_done(out, new, False, "s")
    msg = str(err.value)
    assert "lr: 0.0001 -> 2e-05" in msg and "force=true" in msg and "\n" not in msg
    assert check_done(out, new, True, "s") is False  # force redoes
    aio.atomic_write_json(out / aio.DONE, {"stage": "s"})  # a marker written before fingerprints existed
    assert check_done(out, new, False, "s") is True
    assert "records no settings" in capsys.readouterr().out


def test_damaged_marker_is_one_line_error(tmp_path):
    (tmp_path / aio.DONE).write_text("{not json")
    with pytest.raises(StageInputError, match=r"DONE.json: not valid JSON.*force=true"):
        read_done(tmp_path)


# stage file -> (argv beyond --config, one override that shapes the output)
STAGES = {
    "03_post_pretrain": (["model=tiny_llama"], "seed=7"),
    "04_train_teacher": (["model=tiny_llama", "fold=0"], "lr=3e-4"),
    "07_distill_student": (["student=tiny_llama", "fold=0"], "temperature=2.5"),
    "08_average_merge": (["student=tiny_llama", "folds=[0]"], "method=delta_mean"),
    "09_quantize": (["student=tiny_llama"], "group_size=64"),
    "20_logic_answer": (["split=eval"], "seed=7"),
    "21_logic_reflect": ([], "max_tries=5"),
    "22_logic_sft": ([], "lr=3e-4"),
    "23_logic_merge": ([], "dtype=bf16"),
    "24_logic_quantize": (["bits=[4]"], "group_size=64"),
    "25_logic_evaluate": (["run=eval_fp"], "valid=all"),
}


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_refuses_changed_settings(name, stage_module, tmp_path, monkeypatch, capsys):
    mod = stage_module(name)
    extra, changed = STAGES[name]
    monkeypatch.chdir(tmp_path)  # relative paths of the profile land in tmp
    seen: list[tuple[Path, dict]] = []
    real = mod.check_done

    def spy(out, fp, force, stage, *a, **kw):
        seen.append((Path(out), fp))
        if not Path(out, aio.DONE).is_file():
            raise _Stop  # first pass: learn where the stage writes and what it fingerprints
        return real(out, fp, force, stage, *a, **kw)

    monkeypatch.setattr(mod, "check_done", spy)
    argv = ["--config", CONFIG, *extra]
    with pytest.raises(_Stop):
        mod.main(argv)
    out, fp = seen[-1]
    assert fp and not set(fp) & {"force", "save_every", "save_steps", "verbose"}
    if hasattr(mod, "HEADLINE"):  # stage 25 prints its finished metrics when it skips
        aio.atomic_write_json(out / "metrics.json", {k: 0.5 for k in mod.HEADLINE})
    mark_done(out, fingerprint=fp, stage=name)
    mod.main(argv)  # same settings: skip, as before
    assert "is done with these settings: skipped" in "".join(capsys.readouterr())
    key = changed.split("=")[0]
    with pytest.raises(StageInputError, match=rf"other settings \({key}: .* -> .*\); pass force=true"):
        mod.main([*argv, changed])


def test_logits_stage_refuses_changed_settings(stage_module, tmp_path, monkeypatch):
    """Stage 5 writes one parquet, no folder: its fingerprint sits in the report JSON beside it."""
    mod = stage_module("05_teacher_logits")
    monkeypatch.chdir(tmp_path)
    argv = ["--config", CONFIG, "model=tiny_llama", "fold=0"]
    cfg = mod.C.load_config(mod.LogitsConfig, "logits", argv)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True)
    (out / "tiny_llamafold0.parquet").write_bytes(b"")
    aio.atomic_write_json(out / "tiny_llamafold0.json", {"fingerprint": fingerprint(cfg, ("batch_size", "max_tokens"))})
    assert mod.main(argv)["skipped"] is True
    assert mod.main([*argv, "batch_size=3"])["skipped"] is True  # batching does not change logits
    with pytest.raises(StageInputError, match=r"mode: 'oof' -> 'in_sample'|mode: 'in_sample' -> 'oof'"):
        mod.main([*argv, "mode=" + ("in_sample" if cfg.mode == "oof" else "oof")])
    assert json.loads((out / "tiny_llamafold0.json").read_text())["fingerprint"]["mode"] == cfg.mode
