"""The encoding record: how a model's training rows were encoded, saved in the model folder (``encoding.json``).

A judge must feed its model exactly what it was trained on: the same template, truncation caps and
special tokens. Stage 2 writes its settings next to every tokenized folder (``prepare_fingerprint.json``,
``config.yaml``); the final stages copy the encoding part into the model folders they write (stage 8: the
averaged adapter and ``final_merged``; stage 9: ``final_model_gptq``), and ``arena_distill.judge`` reads it
back. Adapters written before the record existed are traced through their ``config.yaml`` to the processed
folder they were trained on.

``ENCODING_KEYS`` is the one list of the settings that are part of the encoding. Each key is a stage-2
(``prepare``) config key *and* a field of ``arena_text.EncodeOptions`` with the same name;
a key added to the encoder must be added here (and to stage 2's ``FINGERPRINT_KEYS``), and the judge then
passes it on. A record naming a key the installed encoder does not accept is an error, never ignored.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from . import arena_text as at
from .io import StageInputError, atomic_write_json
from .readers import read_json, read_yaml

# max_length is the training length: the judge uses it unless the caller asks for another.
ENCODING_KEYS: tuple[str, ...] = ("max_length", "prompt_max_tokens", "prompt_max_words", "response_max_words",
                                  "truncation_side", "word_split", "prompt_cap", "bos")
# Stage-2 folders made before a key existed were encoded this way (stage 2's LEGACY_FINGERPRINT): a model
# trained on them is judged as it was trained, not with today's defaults.
LEGACY_VALUES: dict[str, Any] = {"word_split": "whitespace", "prompt_cap": "always", "bos": "none"}
RECORD_FILE = "encoding.json"
FORMAT_VERSION = 1
FINGERPRINT_FILE = "prepare_fingerprint.json"  # written by stage 2 next to each tokenized folder


class EncodingRecordError(StageInputError):
    """No usable encoding record; the message says where it looked and how to give one."""


def make_record(values: dict[str, Any], **info: Any) -> dict[str, Any]:
    """A record from stage-2 settings (``values`` may hold other keys; only ``ENCODING_KEYS`` are kept)."""
    return {"format_version": FORMAT_VERSION, "encoding": {k: values[k] for k in ENCODING_KEYS if k in values},
            "template": at.TEMPLATE, "turn_separator": at.TURN_SEPARATOR, "ends_with": "eos_token", **info}


def _prepare_values(folder: Path) -> dict[str, Any] | None:
    """The stage-2 settings of one tokenized folder: its saved config, overlaid by its fingerprint."""
    values: dict[str, Any] = {}
    found = False
    cfg = folder / "config.yaml"
    if cfg.is_file():
        saved = read_yaml(cfg, fix="re-run stage 2 (src/02_prepare_data.py force=true)") or {}
        if saved.get("stage") == "PrepareConfig":
            values.update(saved.get("config") or {})
            found = True
    fp = folder / FINGERPRINT_FILE
    if fp.is_file():
        values.update(read_json(fp, fix="re-run stage 2 (src/02_prepare_data.py force=true)"))
        found = True
    return {**LEGACY_VALUES, **values} if found and values else None


def from_processed(processed_dir: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """The record of the tokenized folders ``<processed_dir>/<name>`` (e.g. ``Gemma2_9bfold0``); every one
    found must agree on the encoding keys."""
    found: list[tuple[Path, dict]] = []
    for name in names:
        folder = Path(processed_dir) / name
        values = _prepare_values(folder)
        if values is not None:
            found.append((folder, {k: values[k] for k in ENCODING_KEYS if k in values}))
    if not found:
        raise EncodingRecordError(f"no stage-2 settings under {processed_dir} for {names} ({FINGERPRINT_FILE} or "
                                  f"config.yaml): cannot tell how the model's rows were encoded")
    first_dir, first = found[0]
    for folder, enc in found[1:]:
        if enc != first:
            diff = {k: (first.get(k), enc.get(k)) for k in set(first) | set(enc) if first.get(k) != enc.get(k)}
            raise EncodingRecordError(f"{first_dir} and {folder} were encoded differently {diff}: the folds of one "
                                      f"model must share one encoding")
    return make_record(first, source=[str(f) for f, _ in found])


def write_record(folder: str | os.PathLike, record: dict[str, Any]) -> Path:
    return atomic_write_json(Path(folder) / RECORD_FILE, record)


def copy_record(src: str | os.PathLike, dst: str | os.PathLike) -> Path | None:
    """Carry the record from one model folder to the next (merged -> quantized); None when there is none."""
    path = Path(src) / RECORD_FILE
    if not path.is_file():
        return None
    Path(dst).mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, Path(dst) / RECORD_FILE)
    return Path(dst) / RECORD_FILE


def _from_saved_config(folder: Path) -> dict[str, Any] | None:
    """Trace an adapter (or merged folder) through its ``config.yaml`` to the processed data it came from."""
    cfg = folder / "config.yaml"
    if not cfg.is_file():
        return None
    saved = read_yaml(cfg, fix="re-run the stage that wrote it") or {}
    conf = saved.get("config") or {}
    processed = conf.get("processed_dir")
    name = conf.get("model") or conf.get("student")
    if not processed or not name:
        return None
    folds = saved.get("folds") or conf.get("folds") or ([conf["fold"]] if "fold" in conf else [])
    names = [f"{name}fold{k}" for k in folds] + ([f"{name}_ut"] if saved.get("stage") == "PostPretrainConfig" else [])
    if not names:
        names = [f"{name}fold{k}" for k in range(int(conf.get("n_folds", 5)))]
    try:
        return from_processed(processed, names)
    except EncodingRecordError:
        return None


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The record of a model folder: ``encoding.json``, else traced through ``config.yaml``; else an error."""
    folder = Path(folder)
    path = folder / RECORD_FILE
    if path.is_file():
        record = read_json(path, fix="re-run the stage that wrote the model folder (8 or 9)")
        if not isinstance(record, dict) or not isinstance(record.get("encoding"), dict):
            raise EncodingRecordError(f"{path}: not an encoding record (expected an 'encoding' mapping)")
        return record
    traced = _from_saved_config(folder)
    if traced is not None:
        return traced
    raise EncodingRecordError(
        f"{folder}: no {RECORD_FILE} and no config.yaml leading to the processed data: the encoding this model "
        f"was trained with is unknown -> re-run stage 8/9 (they write it), or pass it explicitly, e.g. "
        f"Judge(folder, encoding={{'max_length': 1024, 'truncation_side': 'right'}})")


def encode_kwargs(record: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``arena_text.encode_batch_both`` from a record (plus overrides such as a longer
    ``max_length``). A recorded key the encoder does not accept is an error: ignoring it would silently
    encode differently from training."""
    values = {**dict(record.get("encoding", record)), **{k: v for k, v in overrides.items() if v is not None}}
    accepted = set(at.OPTION_KEYS)  # the fields of arena_text.EncodeOptions
    unknown = sorted(set(values) - accepted)
    if unknown:
        raise EncodingRecordError(f"the model was encoded with option(s) {unknown} that this version's encoder "
                                  f"(arena_text.EncodeOptions) does not accept: update the code")
    if "max_length" not in values:
        raise EncodingRecordError("the encoding record has no max_length")
    return values
