"""Atomic writes, "done" markers and input checks shared by every stage.

Why: a killed run must never leave a file or folder that looks finished. Files are written to a
temporary sibling and renamed; a stage's output folder gets ``DONE.json`` last, and later stages (and
re-runs) look for that marker rather than for any single file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

DONE = "DONE.json"


class StageInputError(RuntimeError):
    """A required input is missing or invalid; the message says what to run first or what to fix."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    return atomic_write_text(path, text)


def atomic_write_parquet(path: str | os.PathLike, df: "Any") -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def atomic_write_csv(path: str | os.PathLike, df: "Any") -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a whole output folder under a temporary name and rename it into place when complete.

    Any previous folder at ``path`` is replaced only after the new one is finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a model folder must be readable like any other
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line (logs). Appends of one line are effectively atomic on local disks."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """JSON lines; a bad line or a non-UTF-8 byte is a one-line error (see ``readers``)."""
    from .readers import read_jsonl as _read_jsonl

    return _read_jsonl(path, allow_empty=True)


def mark_done(out_dir: str | os.PathLike, fingerprint: dict[str, Any] | None = None, **info: Any) -> Path:
    """Write the stage's completion marker; always the last write of a stage. ``fingerprint`` (see
    ``fingerprint()``) lets a re-run with other settings notice instead of skipping."""
    extra = {} if fingerprint is None else {"fingerprint": fingerprint}
    return atomic_write_json(Path(out_dir) / DONE,
                             {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info, **extra})


def is_done(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / DONE).is_file()


def read_done(out_dir: str | os.PathLike) -> dict:
    """The marker's content; a damaged marker is a one-line error (see ``readers``)."""
    from .readers import read_json

    data = read_json(Path(out_dir) / DONE, fix=f"delete {Path(out_dir)} (or re-run its stage with force=true)")
    if not isinstance(data, dict):
        raise StageInputError(f"{Path(out_dir) / DONE}: not a JSON object -> delete {Path(out_dir)} "
                              f"(or re-run its stage with force=true)")
    return data


def require(path: str | os.PathLike, run_first: str, what: str = "input") -> Path:
    """Fail with a message naming the missing path and the command that produces it."""
    p = Path(path)
    if not p.exists():
        raise StageInputError(f"missing {what}: {p} -> run first: {run_first}")
    return p


def require_done(out_dir: str | os.PathLike, run_first: str, what: str = "stage output") -> Path:
    p = Path(out_dir)
    if not is_done(p):
        state = "incomplete (no DONE.json: the producing run did not finish)" if p.exists() else "missing"
        raise StageInputError(f"{what} {state}: {p} -> run first: {run_first}")
    return p


def run_stage(main: Callable[[], Any], *user_errors: type[BaseException]) -> None:
    """Command-line entry of a stage: a user-fixable problem (missing input, bad data) prints one
    ``error: ...`` line and exits 2; anything else is a bug and keeps its traceback."""
    try:
        main()
    except (StageInputError, *user_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# --------------------------------------------------------------------------------------------------
# Settings fingerprints: a finished stage re-run with other settings must not skip silently.

# Keys that never shape a stage's output: how a run is driven, logged or where it is written. Every
# other config key is fingerprinted; stages add their own run-only keys through ``exclude``.
RUN_ONLY_KEYS = frozenset({
    "force", "verbose", "report_to", "tracker_dir", "logging_dir", "progress", "log_every",
    "save_every", "save_steps", "stop_after", "cpu_threads", "out_dir", "out_name",
})


# Never written into DONE.json (a secret in a marker file would outlive the run), at any nesting level.
_SECRET_KEY = re.compile(r"api_key|password|secret|(^|_)token$", re.IGNORECASE)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    return value


def fingerprint(cfg: Any, exclude: tuple[str, ...] | frozenset[str] = ()) -> dict[str, Any]:
    """The config keys that shape a stage's output, as JSON values (what ``DONE.json`` stores); secrets
    (API keys, tokens, passwords) are left out."""
    import dataclasses

    drop = RUN_ONLY_KEYS | set(exclude)
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in drop}
    return json.loads(json.dumps(_scrub(values), default=_json_default))  # tuples -> lists, as read back


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value changed, ``{key: (old, new)}``. A key the old run did not record is not
    compared: a code upgrade that adds a setting alone does not make finished outputs stale."""
    return {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}


def check_done(out_dir: str | os.PathLike, fp: dict[str, Any], force: bool, stage: str,
               to_stderr: bool = False) -> bool:
    """Whether a stage may skip ``out_dir``: True when it is done with the same settings (prints so).

    Not done, or ``force``: False (do the work). Done with other settings: a one-line
    ``StageInputError`` naming each changed key (old -> new) and telling to pass force=true. A marker
    from before fingerprints existed is skipped with a warning (its settings cannot be checked).
    ``to_stderr``: for stages whose stdout is a result line.
    """
    out = Path(out_dir)
    if force or not is_done(out):
        return False
    check_settings(out, read_done(out).get("fingerprint"), fp, stage, to_stderr)
    return True


def check_settings(out: str | os.PathLike, old: Any, fp: dict[str, Any], stage: str,
                   to_stderr: bool = False) -> None:
    """For a finished output ``out`` whose recorded fingerprint is ``old``: raise (one line, each
    changed key old -> new, pass force=true) when the settings changed, else print the skip line."""
    from .dist import print0

    stream = sys.stderr if to_stderr else sys.stdout
    if not isinstance(old, dict):
        print0(f"[{stage}] warning: {out} is done but records no settings (made by an older version), so a "
               f"change cannot be detected: skipped (force=true to redo)", file=stream)
        return
    diff = fingerprint_diff(old, fp)
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise StageInputError(f"[{stage}] {out} is done but was made with other settings ({changes}); pass "
                              f"force=true to redo it (then re-run the stages downstream of it)")
    print0(f"[{stage}] {out} is done with these settings: skipped (force=true to redo)", file=stream)
