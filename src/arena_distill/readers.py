"""Readers for every file the project takes as input, turning format failures into one-line user errors.

Why: a file cut off by an interrupted download, saved by a spreadsheet in latin-1, left empty, or a model
folder with a truncated weight file are the user's to fix, not bugs. Each reader here raises
``FileFormatError`` (a ``StageInputError``: ``io.run_stage`` prints it as one ``error: ...`` line and exits 2)
naming the file, what is wrong (line / row / column or byte offset where the parser says) and what to do.
Nothing is ever decoded with replacement characters: text is UTF-8 unless a caller passes an explicit
``encoding``.

Untrusted files are data, never code: nothing here unpickles, evaluates or runs remote code. Weight files
are safetensors (their header is checked without loading any tensor); ``tests/test_malformed.py`` scans the
source tree for ``eval``/``exec``/pickle loading/``torch.load`` without ``weights_only=True``/
``trust_remote_code=True``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator

import yaml

from .io import StageInputError

REDOWNLOAD = "re-download or re-export the file"
RESAVE_UTF8 = "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"


class FileFormatError(StageInputError):
    """An input file exists but cannot be read as the format it should have; the message says where and what
    to do."""


# --------------------------------------------------------------------------------------------------
# Text

def decode_text(data: bytes, path: str | os.PathLike, encoding: str = "utf-8", encoding_key: str = "") -> str:
    """Decode strictly; a bad byte is an error naming its line and byte offset (never replaced). ``encoding_key``:
    the config key that sets the encoding, offered as the other way out."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) and "16" not in encoding:
        raise FileFormatError(f"{path}: is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8 -> "
                              f"{RESAVE_UTF8.replace('latin1', 'utf-16')}"
                              + (f", or pass {encoding_key}=utf-16" if encoding_key else ""))
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start:exc.end]
        raise FileFormatError(
            f"{path}: not valid {encoding} text: line {line}, byte offset {exc.start} (byte {col} of the line) "
            f"is {bad!r} ({exc.reason}) -> {RESAVE_UTF8}"
            + (f", or pass {encoding_key}=<its encoding> (e.g. cp1252)" if encoding_key else "")) from None


def read_bytes(path: str | os.PathLike, *, allow_empty: bool = False, fix: str = REDOWNLOAD) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: not a file" if p.exists() else f"{p}: file not found")
    data = p.read_bytes()
    if not data and not allow_empty:
        raise FileFormatError(f"{p}: file is empty (0 bytes) -> {fix}")
    not_plain(p, data[:64])
    return data


ARCHIVES = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip file", b"BZh": "a bzip2 file",
            b"\xfd7zXZ\x00": "an xz file", b"7z\xbc\xaf\x27\x1c": "a 7z archive"}
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def not_plain(path: Path, head: bytes) -> None:
    """Two common wrong files under the right name: a Git LFS pointer (the repository was cloned without
    ``git lfs``) and a still-compressed download (Kaggle serves zips)."""
    if head.startswith(LFS_POINTER):
        raise FileFormatError(f"{path}: is a Git LFS pointer, not the file itself -> run `git lfs pull` in its "
                              f"repository (or download the file directly)")
    for magic, what in ARCHIVES.items():
        if head.startswith(magic):
            raise FileFormatError(f"{path}: is {what}, not the file itself -> unpack it and point to the file inside")


def read_text(path: str | os.PathLike, *, encoding: str = "utf-8", allow_empty: bool = False,
              fix: str = REDOWNLOAD) -> str:
    return decode_text(read_bytes(path, allow_empty=allow_empty, fix=fix), path, encoding)


def iter_lines(path: str | os.PathLike, *, encoding: str = "utf-8", allow_empty: bool = False,
               fix: str = REDOWNLOAD) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text file, strictly decoded (for JSONL readers). Lines end at ``\n`` only:
    ``str.splitlines`` would also split at U+2028 and friends, which JSON strings may hold raw."""
    text = read_text(path, encoding=encoding, allow_empty=allow_empty, fix=fix)
    yield from enumerate(text.split("\n"), 1)


# --------------------------------------------------------------------------------------------------
# JSON / JSONL / YAML

def read_json(path: str | os.PathLike, *, fix: str = REDOWNLOAD) -> Any:
    text = read_text(path, fix=fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
                              f"(byte offset {exc.pos}) -> {fix}") from None


def read_jsonl(path: str | os.PathLike, *, allow_empty: bool = True, fix: str = REDOWNLOAD) -> list[dict]:
    out = []
    for lineno, line in iter_lines(path, allow_empty=allow_empty, fix=fix):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FileFormatError(f"{path}: line {lineno} is not valid JSON: {exc.msg} at column {exc.colno} "
                                      f"-> {fix}") from None
    return out


def read_yaml(path: str | os.PathLike, *, fix: str = "fix the file") -> Any:
    text = read_text(path, allow_empty=True, fix=fix)
    try:
        # safe loading (plain data only, no Python object tags), and a key given twice is an error: YAML would
        # keep the last value silently
        return yaml.load(text, Loader=_UniqueKeySafeLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x) \
            or type(exc).__name__
        raise FileFormatError(f"{path}: not valid YAML: {where}{what} -> {fix}") from None


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (plain YAML keeps the last value silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are overridable by design
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key]}); only one value can count",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# --------------------------------------------------------------------------------------------------
# Tables

def read_csv(path: str | os.PathLike, *, encoding: str = "utf-8-sig", encoding_key: str = "",
             allow_no_rows: bool = False, fix: str = REDOWNLOAD, **pandas_kw: Any) -> "Any":
    """``pandas.read_csv`` with whole-file problems as ``FileFormatError``: empty file, header without rows,
    bytes that are not ``encoding`` (utf-8-sig: UTF-8, a leading byte-order mark dropped), a quoted cell
    that never closes or a row with too many fields (a cut or mangled file), a last row cut short."""
    import pandas as pd

    data = read_bytes(path, fix=fix)
    text = decode_text(data, path, encoding, encoding_key)
    if text.isspace():
        raise FileFormatError(f"{path}: file has no content (only whitespace) -> {fix}")
    try:
        df = pd.read_csv(io.StringIO(text), **pandas_kw)
    except pd.errors.EmptyDataError:
        raise FileFormatError(f"{path}: no CSV header found -> {fix}") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        hint = ""
        if "EOF inside string" in msg:
            # pandas counts records from 0 = the header: "row N" is row N+1 with the header as row 1.
            msg = _shift_row(msg)
            hint = "a quoted cell never closes: the file looks cut off (interrupted download?); "
        elif "Expected" in msg and "fields" in msg:
            hint = "a row has more fields than the header: "
        raise FileFormatError(f"{path}: not a well-formed CSV: {msg} -> {hint}{fix}") from None
    if not text.endswith(("\n", "\r")):
        cut = _cut_last_row(text)
        if cut:
            raise FileFormatError(f"{path}: the last row {cut} and has no line end: the file looks cut off "
                                  f"(interrupted download?) -> {fix}")
    if len(df) == 0 and not allow_no_rows:
        raise FileFormatError(f"{path}: has a header ({len(df.columns)} columns) but no data rows -> {fix}")
    return df


def _shift_row(msg: str) -> str:
    import re

    return re.sub(r"starting at row (\d+)", lambda m: f"starting at row {int(m.group(1)) + 1} (header = row 1)",
                  msg)


def _cut_last_row(text: str) -> str | None:
    """What is wrong with the last record of a file without a final line end, if it looks cut: fewer fields
    than the header (pandas pads them silently), or an empty last cell (a cut right after a comma)."""
    header: list[str] = []
    last: list[str] = []
    for i, row in enumerate(csv.reader(io.StringIO(text))):
        if i == 0:
            header = row
        elif row:
            last = row
    if not last:
        return None
    if len(last) < len(header):
        return f"has {len(last)} of the header's {len(header)} fields"
    if last[-1] == "":
        return f"ends with an empty '{header[-1]}' cell"
    return None


def read_parquet(path: str | os.PathLike, *, columns: list[str] | None = None,
                 fix: str = "re-run the stage that writes it") -> "Any":
    """``pandas.read_parquet``; a truncated/corrupt file or a missing column is a ``FileFormatError``."""
    import pandas as pd
    import pyarrow as pa

    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{p}: file not found -> {fix}")
    try:
        return pd.read_parquet(p, columns=columns)
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise FileFormatError(f"{p}: not a readable parquet file ({type(exc).__name__}: {msg}) -> {fix}") from None


# --------------------------------------------------------------------------------------------------
# Weights, model and tokenizer folders

WEIGHT_FIX = "re-download / re-copy the checkpoint, or re-run the stage that writes it"


def check_safetensors(file: str | os.PathLike, folder: str | os.PathLike | None = None,
                      fix: str = WEIGHT_FIX) -> dict:
    """Validate a safetensors file from its header alone (no tensor is loaded): the 8-byte header length, the
    JSON header, and that the data section is exactly as long as the header's offsets say (a truncated copy
    is shorter). Returns the header. Format: https://github.com/huggingface/safetensors#format."""
    file = Path(file)
    where = f" (model folder {folder})" if folder is not None else ""
    if not file.is_file():
        raise FileFormatError(f"{file}: weight file not found{where} -> {fix}")
    size = file.stat().st_size
    with open(file, "rb") as fh:
        not_plain(file, fh.read(64))
        fh.seek(0)
        head = fh.read(8)
        if len(head) < 8:
            raise FileFormatError(f"{file}: truncated weight file{where}: {size} bytes, not even a safetensors "
                                  f"header -> {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise FileFormatError(f"{file}: truncated or corrupt weight file{where}: header length {n} bytes but "
                                  f"the file has {size} -> {fix}")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FileFormatError(f"{file}: corrupt weight file{where}: the safetensors header is not JSON "
                                  f"-> {fix}") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{file}: corrupt weight file{where}: the safetensors header is not a mapping "
                              f"-> {fix}")
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end != size:
        state = "truncated" if 8 + n + end > size else "corrupt"
        raise FileFormatError(f"{file}: {state} weight file{where}: {size} bytes, the header describes "
                              f"{8 + n + end} -> {fix}")
    return header


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder (one file, or the shards an index lists)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index, fix=WEIGHT_FIX).get("weight_map", {}).values()))
        return [folder / s for s in shards]
    return sorted(folder.glob("*.safetensors"))


def check_model_folder(folder: str | os.PathLike, *, fix: str = WEIGHT_FIX) -> Path:
    """A checkpoint folder: ``config.json`` present and JSON, weights present and not truncated."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise FileFormatError(f"model folder {folder}: config.json is missing -> {fix}")
    read_json(config, fix=fix)
    files = weight_files(folder)
    # Only safetensors: their header can be checked before loading, and nothing pickle-based is opened.
    # (transformers 5 itself would torch.load a *.bin with weights_only=True, modeling_utils.py load_state_dict.)
    if not files:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        extra = (f" (found {others}: pickle-based weights are not loaded, they can run code; convert them "
                 f"to safetensors once)") if others else ""
        raise FileFormatError(f"model folder {folder}: no *.safetensors weight file{extra} -> {fix}")
    for f in files:
        check_safetensors(f, folder, fix)
    return folder


@contextlib.contextmanager
def loading(folder: str | os.PathLike, what: str = "model", fix: str = WEIGHT_FIX) -> Iterator[None]:
    """Around a ``from_pretrained``: what the checks above cannot see (a config.json without ``model_type``, a
    tokenizer file the library rejects) is still an error naming the folder, with the library's first line."""
    from safetensors import SafetensorError

    try:
        yield
    except FileFormatError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise FileFormatError(f"{what} folder {folder}: cannot be loaded ({type(exc).__name__}: {first}) "
                              f"-> {fix}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_tokenizer_folder(folder: str | os.PathLike, *, fix: str = WEIGHT_FIX) -> Path:
    """A tokenizer folder: ``tokenizer_config.json`` and a vocabulary file present; the JSON ones (and
    ``config.json``, when present) parse."""
    folder = Path(folder)
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        raise FileFormatError(f"tokenizer folder {folder}: tokenizer_config.json is missing -> {fix}")
    read_json(config, fix=fix)
    vocab = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not vocab:
        raise FileFormatError(f"tokenizer folder {folder}: no tokenizer file (one of {list(TOKENIZER_FILES)}) "
                              f"-> {fix}")
    # AutoTokenizer also reads the model's config.json (for the model type) when the folder has one.
    for f in [*vocab, folder / "config.json"]:
        if f.suffix == ".json" and f.is_file():
            read_json(f, fix=fix)
    return folder


def check_adapter_folder(folder: str | os.PathLike, *, fix: str = "re-run the stage that trains it") -> Path:
    """A PEFT adapter folder: ``adapter_config.json`` parses, ``adapter_model.safetensors`` is whole."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise FileFormatError(f"adapter folder {folder}: adapter_config.json is missing -> {fix}")
    read_json(config, fix=fix)
    check_safetensors(folder / "adapter_model.safetensors", folder, fix)
    return folder
