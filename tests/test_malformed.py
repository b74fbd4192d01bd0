"""Malformed inputs get one ``error:`` line naming the file and exit 2, never a traceback, and nothing is written
(issue 13). Every case is built at test time from the sample generator's Kaggle-format rows (or the tiny models):
a CSV cut inside a quoted cell, a latin-1 byte, an empty file, a header-only file, a last row cut between cells,
the row-level problems that already had good errors, a broken profile YAML, truncated/missing model, tokenizer,
adapter and parquet files, and broken generations for the reasoning evaluator. Stage mains run in-process through
``io.run_stage`` (the same wrapper as the command line); one case per entry point also runs as a real subprocess,
and ``run_data.sh`` under ``-m slow``. Also: a CSV with a stray field, UTF-16 text, a zip saved under the CSV's name, a Git LFS pointer instead of
weights, duplicate YAML keys and a Python tag in a profile. Last, a scan of the source tree: untrusted files are
never executed."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arena_distill.io import mark_done, run_stage
from arena_distill.logic_text import LogicDataError
from arena_distill.sample_data import make_sample

from conftest import REPO_ROOT

MODELS = ["tiny_llama", "tiny_gemma2"]


# --------------------------------------------------------------------------------------------------
# How a user error must look

def run_cli(main: Callable[[], object], capsys, *user_errors: type[BaseException]) -> str:
    """Run ``main`` the way a stage's ``__main__`` does (``run_stage(main, *user_errors)``); assert exit 2 and
    one error line; return that line."""
    with pytest.raises(SystemExit) as exc:
        run_stage(main, *user_errors)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    return one_error_line(err)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(("error: ", "config error: ")), err
    return lines[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_subprocess(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **env}
    return subprocess.run(args, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------------------
# Malformed CSVs built from real sample rows (bytes in -> bytes out, plus what the error must say)

@pytest.fixture(scope="module")
def sample() -> dict[str, bytes]:
    files, _ = make_sample(n_train=40, n_test=8, n_33k=4, n_ut=4, seed=13)
    return {name: files[name].to_csv(index=False).encode("utf-8") for name in ("train", "test")}


def cut_mid_cell(data: bytes) -> bytes:
    """An interrupted download: the file ends inside a quoted JSON text cell."""
    pos = data.index(b'"[', len(data) // 2) + 12
    return data[:pos]


def latin1_byte(data: bytes) -> bytes:
    """One 'e' replaced by latin-1 'é' (0xE9): what a spreadsheet saving in latin-1 leaves."""
    pos = latin1_pos(data)
    return data[:pos] + b"\xe9" + data[pos + 1:]


def latin1_pos(data: bytes) -> int:
    return data.index(b"e", len(data) // 2)


def header_only(data: bytes) -> bytes:
    return data[:data.index(b"\n") + 1]


def cut_between_cells(data: bytes) -> bytes:
    """Cut after the last text cell and its comma: the last row lacks its label cells and the line end."""
    return data[:data.rstrip().rindex(b'",') + 2]


def extra_field(data: bytes) -> bytes:
    """Row 5 gets one cell more than the header (a stray delimiter)."""
    lines = data.split(b"\n")
    lines[5] += b',"stray"'
    return b"\n".join(lines)


def zipped(data: bytes) -> bytes:
    """The Kaggle download itself (a zip) saved under the CSV's name."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train.csv", data)
    return buf.getvalue()


WHOLE_FILE_CASES = {
    # name: (make bad bytes, regex the error line must match after the file name)
    "cut_mid_cell": (cut_mid_cell, r"EOF inside string starting at row \d+.*file looks cut off"),
    "latin1": (latin1_byte, r"not valid utf-8-sig text: line \d+, byte offset \d+ .*0xe9|not valid utf-8-sig text"),
    "empty": (lambda d: b"", r"file is empty \(0 bytes\)"),
    "whitespace": (lambda d: b"\n \n", r"no content"),
    "header_only": (header_only, r"has a header \(\d+ columns\) but no data rows"),
    "extra_field": (extra_field, r"Expected \d+ fields in line 6, saw \d+ -> a row has more fields than the header"),
    "utf16": (lambda d: d.decode().encode("utf-16"), r"is UTF-16 text .* or pass encoding=utf-16"),
    "zip": (zipped, r"is a zip archive, not the file itself -> unpack it"),
    "cut_between_cells": (cut_between_cells, r"last row (has \d+ of the header's \d+ fields|ends with an empty "
                                             r"'response_b' cell) and has no line end: the file looks cut off"),
}


def _with_row_edit(data: bytes, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> bytes:
    import io

    return edit(pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)).to_csv(index=False).encode()


def _two_hot(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, ["winner_model_a", "winner_model_b"]] = "1"
    return df


def _dup_id(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[5, "id"] = df.loc[2, "id"]
    return df


def _bad_json(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, "prompt"] = '["unclosed'
    return df


ROW_CASES = {  # problems that already had row-level errors: they must stay one line, exit 2
    "missing_label_column": (lambda d: _with_row_edit(d, lambda df: df.drop(columns=["winner_tie"])),
                             r"missing column"),
    "two_hot_label": (lambda d: _with_row_edit(d, _two_hot), r"row|id"),
    "duplicate_id": (lambda d: _with_row_edit(d, _dup_id), r"duplicate id"),
    "bad_json_cell": (lambda d: _with_row_edit(d, _bad_json), r"prompt"),
}


# --------------------------------------------------------------------------------------------------
# Stage 2 (the data stage)

@pytest.fixture(scope="module")
def prepare(stage_module):
    return stage_module("02_prepare_data")


def _prepare_workspace(root: Path, train: bytes, model_root: Path, **prepare: str) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    (data / "train.csv").write_bytes(train)
    extra = "".join(f"  {k}: {v}\n" for k, v in prepare.items())
    profile = root / "profile.yaml"
    profile.write_text(
        f"common:\n  seed: 5\n  n_folds: 2\n  data_dir: {data}\n  processed_dir: {root / 'processed'}\n"
        f"  model_dir: {model_root}\n  teachers: [{MODELS[0]}]\n  student: {MODELS[1]}\n"
        f"prepare:\n  folds_csv: {root / 'folds.csv'}\n  max_length: 128\n  use_33k: false\n  use_ut: false\n"
        f"{extra}")
    return profile


@pytest.mark.parametrize("case", [*WHOLE_FILE_CASES, *ROW_CASES])
def test_prepare_bad_train_csv(case, prepare, sample, tiny_models_root, tmp_path, capsys):
    make, expect = {**WHOLE_FILE_CASES, **ROW_CASES}[case]
    bad = make(sample["train"])
    profile = _prepare_workspace(tmp_path, bad, tiny_models_root, bad_json="error")
    before = files_under(tmp_path)
    line = run_cli(lambda: prepare.main(["--config", str(profile)]), capsys)
    train_csv = tmp_path / "data" / "train.csv"
    assert f"{train_csv}" in line
    assert re.search(expect, line, re.IGNORECASE), line
    if case == "latin1":
        pos = latin1_pos(sample["train"])
        lineno = sample["train"].count(b"\n", 0, pos) + 1
        assert f"byte offset {pos} " in line and f"line {lineno}," in line
        assert "re-save it as UTF-8" in line and "or pass encoding=" in line  # says what to do
    assert files_under(tmp_path) == before  # no folds.csv, no processed data


def test_prepare_sample_csv_is_fine_and_bom_is_accepted(sample):
    """The reader does not reject what is valid: the clean sample file, and the same with a byte-order mark."""
    from arena_distill.arena_text import read_arena_csv

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("plain.csv", sample["train"]), ("bom.csv", b"\xef\xbb\xbf" + sample["train"])):
            path = Path(tmp) / name
            path.write_bytes(data)
            df = read_arena_csv(path, kind="train")
            assert len(df) == 40 and df.columns[0] == "id"
        # a file without a final line end but complete last row is valid too
        path = Path(tmp) / "no_eol.csv"
        path.write_bytes(sample["train"].rstrip(b"\n"))
        assert len(read_arena_csv(path, kind="train")) == 40


def test_valid_files_still_read(tmp_path):
    """The strict readers accept what is valid: raw U+2028 inside a JSONL string (``str.splitlines`` would cut
    there), YAML anchors and merge keys, CRLF line ends, a CSV without a final line end."""
    from arena_distill import readers

    rows = [{"text": "a\u2028b\x1cc", "n": 1}, {"text": "中文 🙂", "n": 2}]
    jl = tmp_path / "x.jsonl"
    jl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert readers.read_jsonl(jl) == rows
    ym = tmp_path / "x.yaml"
    ym.write_text("base: &b {k: 1, m: 2}\nother:\n  <<: *b\n  k: 3\n")
    assert readers.read_yaml(ym) == {"base": {"k": 1, "m": 2}, "other": {"k": 3, "m": 2}}
    cs = tmp_path / "x.csv"
    cs.write_bytes(b"id,text\r\n1,\"a,b\"\r\n2,c")
    assert readers.read_csv(cs)["text"].tolist() == ["a,b", "c"]


def test_prepare_explicit_encoding_reads_latin1(sample, tmp_path):
    """The alternative to re-saving: an explicit ``encoding`` (never a silent replacement)."""
    from arena_distill.arena_text import read_arena_csv

    path = tmp_path / "latin1.csv"
    path.write_bytes(latin1_byte(sample["train"]))
    df = read_arena_csv(path, kind="train", encoding="latin-1")
    assert len(df) == 40 and any("é" in t for t in df["prompt"].tolist() + df["response_a"].tolist()
                                 + df["response_b"].tolist())


def test_prepare_encoding_key_reads_a_latin1_file(prepare, sample, tiny_models_root, tmp_path, capsys):
    """The error's other way out works end to end: ``encoding=latin-1`` and the stage writes its outputs."""
    profile = _prepare_workspace(tmp_path, latin1_byte(sample["train"]), tiny_models_root)
    assert prepare.main(["--config", str(profile), "encoding=latin-1"]) == 0
    assert (tmp_path / "folds.csv").is_file() and (tmp_path / "processed" / f"{MODELS[0]}fold0" / "DONE.json").is_file()


def test_prepare_cut_csv_subprocess(sample, tiny_models_root, tmp_path):
    profile = _prepare_workspace(tmp_path, cut_mid_cell(sample["train"]), tiny_models_root)
    before = files_under(tmp_path)
    proc = run_subprocess([sys.executable, "src/02_prepare_data.py", "--config", str(profile)])
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert str(tmp_path / "data" / "train.csv") in line and "cut off" in line
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# Profile YAML

BROKEN_YAML = {
    "unclosed_list": ("common:\n  seed: 5\n  teachers: [a, b\nprepare:\n  n_folds: 2\n", r"line \d+, column \d+"),
    "bad_indent": ("common:\n  seed: 5\n    n_folds: 2\n", r"line 3, column \d+"),
    "tab": ("common:\n\tseed: 5\n", r"line 2, column \d+"),
    "latin1": (b"common:\n  data_dir: caf\xe9\n", r"line 2, byte offset 23 "),
    "top_level_list": ("- a\n- b\n", r"top level must be a mapping"),
    "duplicate_key": ("common:\n  seed: 5\nprepare:\n  n_folds: 2\n  n_folds: 3\n",
                      r"line 5, column 3: key 'n_folds' given twice \(first on line 4\)"),
    "python_tag": ("common: !!python/object/apply:os.system ['echo hi']\n", r"line 1, column 9: could not determine"),
}


@pytest.mark.parametrize("case", BROKEN_YAML)
def test_broken_profile_yaml(case, prepare, tmp_path, capsys):
    text, expect = BROKEN_YAML[case]
    profile = tmp_path / "broken.yaml"
    profile.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = run_cli(lambda: prepare.main(["--config", str(profile)]), capsys)
    assert line.startswith("config error: ") and str(profile) in line
    assert re.search(expect, line), line
    assert files_under(tmp_path) == {"broken.yaml"}


def test_broken_profile_yaml_subprocess(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text(BROKEN_YAML["unclosed_list"][0])
    proc = run_subprocess([sys.executable, "src/02_prepare_data.py", "--config", str(profile)])
    assert proc.returncode == 2
    assert str(profile) in one_error_line(proc.stderr)
    # the runbooks' config helper too
    proc = run_subprocess([sys.executable, "-m", "arena_distill.config", "--config", str(profile), "get",
                           "common.data_dir"])
    assert proc.returncode == 2 and str(profile) in one_error_line(proc.stderr)


# --------------------------------------------------------------------------------------------------
# predict_test.py

@pytest.fixture(scope="module")
def predict_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_test_malformed", REPO_ROOT / "predict_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _predict_profile(root: Path, test: bytes, merged: Path) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "test.csv").write_bytes(test)
    profile = root / "profile.yaml"
    profile.write_text(f"common:\n  data_dir: {root / 'data'}\n  save_dir: {root / 'save'}\n  student: s\n"
                       f"predict:\n  model_source: merged\n  merged_dir: {merged}\n  out: {root / 'sub' / 'sub.csv'}\n"
                       f"  max_length: 128\n")
    return profile


@pytest.mark.parametrize("case", ["cut_mid_cell", "latin1", "empty", "header_only", "cut_between_cells"])
def test_predict_bad_test_csv(case, predict_script, sample, tiny_model_dirs, tmp_path, capsys):
    bad = WHOLE_FILE_CASES[case][0](sample["test"])
    profile = _predict_profile(tmp_path, bad, tiny_model_dirs["tiny_llama"])
    before = files_under(tmp_path)
    line = run_cli(lambda: predict_script.main(["--config", str(profile)]), capsys)
    assert str(tmp_path / "data" / "test.csv") in line
    assert re.search(WHOLE_FILE_CASES[case][1], line, re.IGNORECASE), line
    assert files_under(tmp_path) == before  # no submission, no report


def test_predict_cut_test_csv_subprocess(sample, tiny_model_dirs, tmp_path):
    profile = _predict_profile(tmp_path, cut_mid_cell(sample["test"]), tiny_model_dirs["tiny_llama"])
    before = files_under(tmp_path)
    proc = run_subprocess([sys.executable, "predict_test.py", "--config", str(profile)])
    assert proc.returncode == 2, proc.stderr
    assert str(tmp_path / "data" / "test.csv") in one_error_line(proc.stderr)
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# Model, tokenizer and adapter folders

def corrupt_copy(src: Path, dst: Path, how: str) -> Path:
    """A copy of a tiny model folder with one thing broken; returns the file that is broken."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if how == "truncated_weights":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
        return weights
    if how == "weights_8_bytes":
        weights.write_bytes(weights.read_bytes()[:8])
        return weights
    if how == "no_weights":
        weights.unlink()
        return dst
    if how == "config_not_json":
        (dst / "config.json").write_text('{"model_type": "llama", ')
        return dst / "config.json"
    if how == "config_no_model_type":
        (dst / "config.json").write_text("{}")
        return dst
    if how == "lfs_pointer":
        weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 123456\n")
        return weights
    if how == "no_tokenizer_json":
        (dst / "tokenizer.json").unlink()
        return dst
    if how == "no_tokenizer_config":
        (dst / "tokenizer_config.json").unlink()
        return dst
    raise ValueError(how)


MODEL_CASES = {"truncated_weights": r"truncated weight file .*model folder",
               "weights_8_bytes": r"truncated or corrupt weight file .*model folder",
               "no_weights": r"no \*\.safetensors weight file",
               "config_not_json": r"not valid JSON: .* line 1, column \d+",
               "config_no_model_type": r"cannot be loaded \(ValueError: ",
               "lfs_pointer": r"is a Git LFS pointer, not the file itself -> run `git lfs pull`",
               "no_tokenizer_json": r"no tokenizer file",
               "no_tokenizer_config": r"tokenizer_config\.json is missing"}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_predict_corrupt_model_folder(case, predict_script, sample, tiny_model_dirs, tmp_path, capsys):
    broken = corrupt_copy(tiny_model_dirs["tiny_llama"], tmp_path / "merged", case)
    profile = _predict_profile(tmp_path, sample["test"], tmp_path / "merged")
    before = files_under(tmp_path)
    line = run_cli(lambda: predict_script.main(["--config", str(profile)]), capsys)
    assert str(broken) in line and re.search(MODEL_CASES[case], line), line
    if case == "truncated_weights":
        assert f"(model folder {tmp_path / 'merged'})" in line
    assert files_under(tmp_path) == before


def test_predict_truncated_adapter(predict_script, sample, tiny_model_dirs, tmp_path, capsys):
    adapter = tmp_path / "save" / "s_avg"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "config.yaml").write_text(f"base_model: {tiny_model_dirs['tiny_gemma2']}\n")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    profile = _predict_profile(tmp_path, sample["test"], tmp_path / "nothing")
    before = files_under(tmp_path)
    line = run_cli(lambda: predict_script.main(["--config", str(profile), "model_source=adapter"]), capsys)
    assert str(adapter / "adapter_model.safetensors") in line and "weight file" in line
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# Stage 7 (distillation): corrupted student folder, truncated fold data

@pytest.fixture(scope="module")
def distill(stage_module):
    return stage_module("07_distill_student")


def _distill_workspace(root: Path, student_src: Path, how: str | None) -> tuple[Path, Path | None]:
    fold = root / "processed" / "studfold0"
    fold.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("dev", 4)):
        ids = [rng.integers(5, 200, size=int(rng.integers(8, 20))).astype(np.int32) for _ in range(n)]
        table = pa.table({"id": np.arange(n, dtype=np.int64), "swap": np.zeros(n, dtype=bool),
                          "label": (np.arange(n) % 3).astype(np.int8),
                          "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
                          "length": np.array([len(x) for x in ids], dtype=np.int32),
                          "source": ["train"] * n})
        pq.write_table(table, fold / f"{split}.parquet")
    mark_done(fold)
    broken = None
    models = root / "models"
    if how is None:
        shutil.copytree(student_src, models / "stud")
    else:
        broken = corrupt_copy(student_src, models / "stud", how)
    profile = root / "profile.yaml"
    profile.write_text(f"common:\n  processed_dir: {root / 'processed'}\n  model_dir: {models}\n"
                       f"  save_dir: {root / 'save'}\n  student: stud\n  teachers: []\n  n_folds: 2\n"
                       f"distill:\n  max_steps: 1\n  global_batch: 2\n  micro_batch: 2\n  lora_r: 2\n"
                       f"  lora_alpha: 4\n  init_from_post_pretrain: false\n")
    return profile, broken


@pytest.mark.parametrize("case", ["truncated_weights", "config_not_json", "no_tokenizer_json"])
def test_distill_corrupt_student_folder(case, distill, tiny_model_dirs, tmp_path, capsys):
    profile, broken = _distill_workspace(tmp_path, tiny_model_dirs["tiny_gemma2"], case)
    before = files_under(tmp_path)
    line = run_cli(lambda: distill.main(["--config", str(profile)]), capsys)
    assert str(broken) in line and re.search(MODEL_CASES[case], line), line
    assert files_under(tmp_path) == before  # no adapter folder, no checkpoint


def test_distill_truncated_fold_parquet(distill, tiny_model_dirs, tmp_path, capsys):
    profile, _ = _distill_workspace(tmp_path, tiny_model_dirs["tiny_gemma2"], None)
    train = tmp_path / "processed" / "studfold0" / "train.parquet"
    train.write_bytes(train.read_bytes()[:100])
    before = files_under(tmp_path)
    line = run_cli(lambda: distill.main(["--config", str(profile)]), capsys)
    assert str(train) in line and "not a readable parquet file" in line and "sh run_data.sh" in line
    assert files_under(tmp_path) == before


@pytest.mark.slow  # ~8 s (imports the training stack); the in-process test above covers the default run
def test_distill_truncated_weights_subprocess(tiny_model_dirs, tmp_path):
    profile, broken = _distill_workspace(tmp_path, tiny_model_dirs["tiny_gemma2"], "truncated_weights")
    before = files_under(tmp_path)
    proc = run_subprocess([sys.executable, "src/07_distill_student.py", "--config", str(profile)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line("\n".join(l for l in proc.stderr.splitlines() if not l.startswith("[")))
    assert str(broken) in line and str(tmp_path / "models" / "stud") in line
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("how", ["truncated", "not_parquet", "empty"])
def test_merge_logits_broken_teacher_logits(how, stage_module, tiny_model_dirs, tmp_path, capsys):
    """Stage 6 with a teacher's logits file (stage 5's output) cut short, replaced by text, or empty."""
    merge = stage_module("06_merge_logits")
    profile, _ = _distill_workspace(tmp_path, tiny_model_dirs["tiny_gemma2"], None)
    logits = tmp_path / "oof" / "tfold0.parquet"
    logits.parent.mkdir()
    table = pa.table({"source": ["train"] * 8, "id": np.arange(8), "swap": np.zeros(8, dtype=bool),
                      **{f"logit_{j}": np.zeros(8, dtype=np.float32) for j in range(3)}})
    pq.write_table(table, logits)
    data = logits.read_bytes()
    logits.write_bytes({"truncated": data[:len(data) // 2], "not_parquet": b"id,logit_0\n1,0.5\n", "empty": b""}[how])
    before = files_under(tmp_path)
    argv = ["--config", str(profile), "teachers=[t]", f"logits_dir={tmp_path / 'oof'}"]
    line = run_cli(lambda: merge.main(argv), capsys)
    assert str(logits) in line and "not a readable parquet file" in line and "05_teacher_logits.py model=t" in line
    assert files_under(tmp_path) == before  # train.parquet untouched, no merge record


def test_missing_inputs_are_one_line_too(predict_script, distill, sample, tmp_path, capsys):
    """Wrong order (an input not produced yet) is one line with the command to run first."""
    profile = _predict_profile(tmp_path, sample["test"], tmp_path / "nothing")
    line = run_cli(lambda: predict_script.main(["--config", str(profile)]), capsys)
    assert "no model to predict with" in line and "-> run first: sh run_final.sh" in line
    profile = tmp_path / "distill.yaml"
    profile.write_text(f"common:\n  processed_dir: {tmp_path / 'none'}\n  student: stud\n")
    line = run_cli(lambda: distill.main(["--config", str(profile)]), capsys)
    assert str(tmp_path / "none" / "studfold0") in line and "-> run first: sh run_data.sh" in line


# --------------------------------------------------------------------------------------------------
# Stage 25 (the reasoning evaluator): broken generations / data files

PROBLEMS = [{"problem": "甲比乙高。", "id": "p0", "questions": [
    {"question": "谁高？", "options": ["甲", "乙"], "answer": "A"}]}]
GOOD_GEN = {"id": "p0", "qid": 0, "attempt": 0, "output": "因此答案是：A"}

BROKEN_GENERATIONS = {
    "cut_line": ((json.dumps(GOOD_GEN, ensure_ascii=False) + "\n" + json.dumps(GOOD_GEN)[:20]).encode(),
                 r"line 2: not valid JSON"),
    "latin1": (json.dumps(GOOD_GEN).encode()[:-2] + b"\xe9\"}\n", r"line 1, byte offset \d+"),
    "empty": (b"", r"file is empty \(0 bytes\)"),
    "missing_field": (b'{"id": "p0", "output": "x"}\n', r"line 1: missing field 'qid'"),
}


@pytest.fixture(scope="module")
def evaluate(stage_module):
    return stage_module("25_logic_evaluate")


@pytest.mark.parametrize("case", BROKEN_GENERATIONS)
def test_evaluator_broken_generations(case, evaluate, tmp_path, capsys):
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps(PROBLEMS[0], ensure_ascii=False) + "\n", encoding="utf-8")
    gens = tmp_path / "gen" / "generations.jsonl"
    gens.parent.mkdir()
    gens.write_bytes(BROKEN_GENERATIONS[case][0])
    before = files_under(tmp_path)
    argv = ["--config", str(REPO_ROOT / "configs" / "tiny.yaml"), f"generations={gens}", f"data_file={data}",
            f"logic_dir={tmp_path / 'logic'}"]
    line = run_cli(lambda: evaluate.main(argv), capsys, LogicDataError, FileNotFoundError)  # as its __main__
    assert str(gens) in line and re.search(BROKEN_GENERATIONS[case][1], line), line
    assert files_under(tmp_path) == before  # no eval folder, no eval table


def test_evaluator_broken_data_file_and_subprocess(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_bytes(json.dumps(PROBLEMS[0], ensure_ascii=False).encode("utf-8").replace("甲".encode(), b"\xb3\xd7"))
    gens = tmp_path / "gen" / "generations.jsonl"
    gens.parent.mkdir()
    gens.write_text(json.dumps(GOOD_GEN) + "\n")
    before = files_under(tmp_path)
    proc = run_subprocess([sys.executable, "src/25_logic_evaluate.py", "--config", "configs/tiny.yaml",
                           f"generations={gens}", f"data_file={data}", f"logic_dir={tmp_path / 'logic'}"])
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert str(data) in line and "line 1, byte offset" in line  # a GBK-encoded file named, with the place
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# run_data.sh (the data runbook) with a cut train file

@pytest.mark.slow
def test_run_data_sh_cut_train_csv(sample, tiny_models_root, tmp_path):
    profile = _prepare_workspace(tmp_path, cut_mid_cell(sample["train"]), tiny_models_root)
    before = files_under(tmp_path)
    proc = run_subprocess(["bash", "run_data.sh"], CONFIG=str(profile))
    assert proc.returncode == 2, proc.stderr
    assert str(tmp_path / "data" / "train.csv") in one_error_line(proc.stderr)
    assert files_under(tmp_path) == before
    # a broken profile stops the runbook at its first config read, also with exit 2 and one line
    profile.write_text(BROKEN_YAML["unclosed_list"][0])
    proc = run_subprocess(["bash", "run_data.sh"], CONFIG=str(profile))
    assert proc.returncode == 2 and str(profile) in one_error_line(proc.stderr)


@pytest.mark.slow
def test_run_data_sh_tiny_profile_cut_train_csv(sample, tmp_path):
    """With the tiny profile, stage 1 reads train.csv first (tokenizer corpus): the same one line, exit 2."""
    (tmp_path / "data").mkdir()
    train = tmp_path / "data" / "train.csv"
    train.write_bytes(cut_mid_cell(sample["train"]))
    before = files_under(tmp_path)
    proc = run_subprocess(["bash", "run_data.sh", f"common.data_dir={tmp_path / 'data'}",
                           f"common.model_dir={tmp_path / 'models'}", f"common.processed_dir={tmp_path / 'processed'}",
                           f"prepare.folds_csv={tmp_path / 'folds.csv'}"], CONFIG="configs/tiny.yaml")
    assert proc.returncode == 2, proc.stderr
    assert str(train) in one_error_line(proc.stderr)
    assert files_under(tmp_path) == before  # no model folder, no folds, no processed data


# --------------------------------------------------------------------------------------------------
# Untrusted files are never executed: a scan of the source tree

# (path relative to the repository, rule) -> why it is acceptable. Keep every entry justified.
ALLOWED: dict[tuple[str, str], str] = {
    ("src/arena_distill/readers.py", "yaml.load"): "Loader=_UniqueKeySafeLoader, a yaml.SafeLoader subclass that "
                                                   "also refuses duplicate keys",
    ("src/arena_distill/seed_artifacts.py", "pickle.load"): "the seed's fold files are pickles; read only after "
                                                            "the user passes allow_pickle=true (refused otherwise, "
                                                            "tests/test_seed_artifacts.py)",
}

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """``(line, rule)`` for each call that can execute what a file contains. AST-based: comments and strings
    (``model.eval()``, "what eval() produces") are not calls of the builtin."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if isinstance(func, ast.Name) and name in ("eval", "exec"):
                found.append((node.lineno, name))
            elif owner in PICKLE_MODULES and name in ("load", "loads", "open", "Unpickler"):
                found.append((node.lineno, f"{owner}.{name}"))
            elif name in ("read_pickle", "Unpickler"):
                found.append((node.lineno, name))
            elif owner == "torch" and name == "load" and not (
                    isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
            elif owner == "yaml" and (name in ("unsafe_load", "full_load", "unsafe_load_all") or (
                    name in ("load", "load_all") and not _safe_loader(kw.get("Loader")))):
                found.append((node.lineno, f"yaml.{name}"))
            for key in ("trust_remote_code", "allow_pickle"):
                if isinstance(kw.get(key), ast.Constant) and kw[key].value is True:
                    found.append((node.lineno, f"{key}=True"))
        elif isinstance(node, (ast.AnnAssign, ast.Assign)):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets}
            if "trust_remote_code" in names and node.value is not None and any(
                    isinstance(c, ast.Constant) and c.value is True for c in ast.walk(node.value)):
                found.append((node.lineno, "trust_remote_code defaults to True"))
    return found


def _safe_loader(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("SafeLoader", "CSafeLoader", "BaseLoader")


def _repo_python_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "__pycache__"}
    out = []
    for path in REPO_ROOT.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).parts
        if not skip & set(parts) and not any(p.startswith(".") for p in parts[:-1]):
            out.append(path)
    return sorted(out)


def test_no_code_execution_from_files():
    files = _repo_python_files()
    assert len(files) > 30 and REPO_ROOT / "predict_test.py" in files
    hits = []
    for path in files:
        rel = str(path.relative_to(REPO_ROOT))
        for line, rule in unsafe_calls(path.read_text(encoding="utf-8")):
            if (rel, rule) not in ALLOWED:
                hits.append(f"{rel}:{line}: {rule}")
    assert not hits, "untrusted files must never be executed:\n" + "\n".join(hits)
    shell = [p for p in REPO_ROOT.glob("**/*.sh") if ".venv" not in p.parts]
    for path in shell:
        for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = text.split("#", 1)[0]
            assert not re.search(r"(^|[;&|\s])eval\s", code), f"{path}:{i}: eval in a shell script"


def test_scanner_catches_each_rule():
    bad = """
import pickle, torch, yaml, joblib, numpy as np, pandas as pd
eval(cell)
exec(code)
pickle.load(fh)
pickle.loads(blob)
joblib.load(path)
pd.read_pickle(path)
torch.load(path)
torch.load(path, weights_only=False)
yaml.load(text)
yaml.unsafe_load(text)
AutoModel.from_pretrained(p, trust_remote_code=True)
np.load(p, allow_pickle=True)
trust_remote_code: bool = field(True, help="x")
"""
    rules = sorted(rule for _, rule in unsafe_calls(bad))
    assert rules == sorted(["eval", "exec", "pickle.load", "pickle.loads", "joblib.load", "read_pickle",
                            "torch.load without weights_only=True", "torch.load without weights_only=True",
                            "yaml.load", "yaml.unsafe_load", "trust_remote_code=True", "allow_pickle=True",
                            "trust_remote_code defaults to True"])
    good = """
model.eval()
torch.load(path, weights_only=True, map_location="cpu")
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
json.loads(cell)  # not eval(cell)
x = "eval(cell)"
np.load(p)
AutoModel.from_pretrained(p, trust_remote_code=False)
"""
    assert unsafe_calls(good) == []
