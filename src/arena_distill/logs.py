"""Quiet by default: hide third-party chatter that does not concern the user; ``-v`` shows everything.

Installed once, when the ``arena_distill`` package is first imported (every stage, runbook helper and
``predict_test.py`` goes through it), so it acts before torch, transformers, DeepSpeed or GPTQModel load.

Hidden by default (each is a known message, matched precisely; anything else still prints):
- torch ``_pytree``: "<enum ...> is an Enum subclass ... register_constant() ... deprecated", logged
  for torchao's own enums at import (torch/utils/_pytree.py ``register_constant``); a note to torchao.
- torchao: "Failed to load .../_C_*.so" for CUDA kernels that cannot load on this machine (torchao
  logs each at WARNING from its ``__init__``; the pure-PyTorch paths we use do not need them).
- DeepSpeed: "Setting accelerator to CPU. If you have GPU ..." (deepspeed/accelerator/real_accelerator.py),
  printed by every CPU process that imports DeepSpeed through accelerate.
- GPTQModel, imported by peft's LoRA dispatch (peft/tuners/lora/gptq.py) even for unquantized models:
  its ASCII banner, "ENV: Auto setting ..." INFO lines (both INFO on its ``logbar`` logger, which it
  forces to INFO on creation, logbar.py ``LogBar.shared``) and "Python GIL is enabled ..." (its own
  switch ``GPTQMODEL_DISABLE_GIL_WARNING=1``, gptqmodel/utils/__init__.py). Its warnings stay.
- transformers: the LOAD REPORT of a classifier built from a causal LM when the only differences are
  the expected ones (the new ``score`` head MISSING, the unused ``lm_head`` UNEXPECTED); a report with
  any other key is kept. The "Loading weights" progress bars (``HF_HUB_DISABLE_PROGRESS_BARS``, which
  transformers' tqdm follows, transformers/utils/logging.py ``_tqdm_active``). The FutureWarning
  "`is_gradient_checkpointing` is deprecated" raised inside transformers/peft, not by our code.

Verbose (nothing hidden): ``ARENA_VERBOSE=1``, or ``-v`` / ``--verbose`` / ``verbose=true`` /
``common.verbose=true`` on a stage's or runbook's command line (config parsing accepts and drops them).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import warnings
from typing import Callable

_TRUE = ("1", "true", "yes", "on")
_VERBOSE_ARG = re.compile(r"^(?:--?)?(?:common\.)?verbose=(.*)$", re.IGNORECASE)

# logger name -> messages hidden from it (regex, searched in the formatted message)
NOISE: dict[str, list[re.Pattern]] = {
    "torch.utils._pytree": [re.compile(r"is an Enum subclass and is now natively supported by torch\.compile")],
    "torchao": [re.compile(r"^Failed to load .*\.so\b")],
    "DeepSpeed": [re.compile(r"^Setting accelerator to CPU\. If you have GPU")],
}
# Keys a classifier built from a causal-LM checkpoint is expected to lack (new head) or leave unused.
_EXPECTED_REPORT_KEY = re.compile(r"^(score|classifier|lm_head)\.(weight|bias)$")

_installed = False
_verbose = False


def verbose_requested(argv: list[str] | None = None) -> bool:
    """ARENA_VERBOSE=1 or a -v/--verbose/verbose=true argument."""
    if os.environ.get("ARENA_VERBOSE", "").strip().lower() in _TRUE:
        return True
    for arg in sys.argv[1:] if argv is None else argv:
        if arg in ("-v", "--verbose"):
            return True
        m = _VERBOSE_ARG.match(arg)
        if m and m.group(1).strip().lower() in _TRUE:
            return True
    return False


def is_verbose() -> bool:
    return _verbose


class _MessageFilter(logging.Filter):
    def __init__(self, patterns: list[re.Pattern]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let it through
            return True
        return not any(p.search(msg) for p in self.patterns)


class _LoadReportFilter(logging.Filter):
    """Hide a transformers LOAD REPORT whose rows are only the expected head keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "LOAD REPORT" not in msg:
            return True
        keys = [line.split("|")[0].strip() for line in msg.splitlines()
                if line.count("|") >= 1 and not line.lstrip().startswith(("Key", "-"))]
        keys = [k for k in keys if k]
        return not keys or not all(_EXPECTED_REPORT_KEY.match(k) for k in keys)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run a callback right after a module finishes importing (to adjust a library's logger that the
    library itself creates and configures at import time)."""

    def __init__(self, name: str, callback: Callable[[object], None]):
        self.name, self.callback, self.busy = name, callback, False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self.busy:
            return None
        self.busy = True  # the real spec, found by the other finders (we answer None while busy)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        loader, callback, finder = spec.loader, self.callback, self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                if finder in sys.meta_path:  # once (removed here, not while Python iterates the finders)
                    sys.meta_path.remove(finder)
                callback(module)

        spec.loader = _Loader()
        return spec


def _quiet_logbar(module: object) -> None:
    """GPTQModel's logger (logbar) sets itself to INFO when created: keep it at WARNING instead."""
    cls = getattr(module, "LogBar", None)
    shared = getattr(cls, "shared", None)
    if shared is None:
        return
    original = shared.__func__

    def quiet_shared(klass, *args, **kwargs):
        # On creation it also prints an empty line ("clear space from previous logs", logbar.py): muted too.
        mute = not _verbose and getattr(module, "logger", True) is None and callable(getattr(module, "_print", None))
        printer = getattr(module, "_print", None)
        if mute:
            module._print = lambda *a, **k: None
        try:
            logger = original(klass, *args, **kwargs)
        finally:
            if mute:
                module._print = printer
        if not _verbose and logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
        return logger

    cls.shared = classmethod(quiet_shared)


def install(argv: list[str] | None = None) -> bool:
    """Install the filters (idempotent); return whether verbose mode is on."""
    global _installed, _verbose
    if _installed:
        return _verbose
    _installed = True
    _verbose = verbose_requested(argv)
    if _verbose:
        os.environ["ARENA_VERBOSE"] = "1"  # child processes (launchers, workers) see it too
        return True
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name, patterns in NOISE.items():
        logging.getLogger(name).addFilter(_MessageFilter(patterns))
    # from_pretrained logs it on transformers.modeling_utils' logger (modeling_utils.py, log_state_dict_report)
    for name in ("transformers.modeling_utils", "transformers.utils.loading_report"):
        logging.getLogger(name).addFilter(_LoadReportFilter())
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if "logbar.logbar" in sys.modules:  # imported before us: patch it and quiet the live logger
        _quiet_logbar(sys.modules["logbar.logbar"])
        if logging.getLogger("logbar").level < logging.WARNING:
            logging.getLogger("logbar").setLevel(logging.WARNING)
    else:
        sys.meta_path.insert(0, _AfterImport("logbar.logbar", _quiet_logbar))
    return False
