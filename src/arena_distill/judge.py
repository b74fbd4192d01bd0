"""A trained judge you can call: ``Judge(folder).predict(prompts, responses_a, responses_b)``.

    from arena_distill.judge import Judge
    judge = Judge("model_save/final_model_gptq")            # or final_merged, or an adapter folder
    probs = judge.predict(["What is 2+2?"], ["4"], ["5"])  # [[p(A wins), p(B wins), p(tie)]]

Any model folder the pipeline writes works: GPTQ (``config.json`` with a ``quantization_config``), a merged
full-precision checkpoint, or a PEFT adapter (its base model from ``config.yaml`` / ``adapter_config.json``,
or ``base_model=``). The encoding is the one the model was trained with, read from the folder's encoding
record (``arena_distill.encoding_record``); nothing is guessed. A prompt or response may be a string or a
list of turns (joined as in training). Rows are scored in length-sorted batches
(``scoring.score_classifier``) on the GPU when there is one, else the CPU; with ``tta=True`` every row is also
scored with A and B swapped and the two probability vectors are averaged (``predict.tta_combine``).
``max_length`` defaults to the training length from the record; the seed predicted the test set at 2000 tokens
(``predict.max_length``), which keeps more of long rows: pass ``max_length=2000`` for that.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import arena_text as at
from . import encoding_record as er


def model_kind(folder: str | os.PathLike) -> str:
    """``adapter`` / ``gptq`` / ``merged`` from the folder's files."""
    from .io import StageInputError
    from .quant import is_quantized

    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "gptq" if is_quantized(folder) else "merged"
    raise StageInputError(f"{folder}: not a model folder (no config.json or adapter_config.json)")


def _texts(values: Sequence[Any], name: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (list, tuple)) and all(t is None or isinstance(t, str) for t in v):
            out.append(at.join_turns(v))
        else:
            raise TypeError(f"{name}[{i}]: expected a string or a list of turns, got {type(v).__name__}")
    return out


class Judge:
    """A loaded pairwise judge (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, *, base_model: str = "", device: Any = None, dtype: str = "auto",
                 batch_size: int = 8, max_tokens: int | None = None, max_length: int | None = None,
                 encoding: dict[str, Any] | None = None, attn_implementation: str | None = None,
                 progress: bool = True) -> None:
        import torch

        from .dist import pick_device
        from .predict import load_for_prediction

        self.folder = Path(folder)
        self.kind = model_kind(self.folder)
        self.record = er.make_record(encoding, source="given") if encoding is not None else er.read_record(self.folder)
        self.encode_kwargs = er.encode_kwargs(self.record, max_length=max_length)  # checked before loading
        self.device = torch.device(device) if device is not None else pick_device()
        self.model, self.tokenizer = load_for_prediction(self.kind, self.folder, base_model=base_model, dtype=dtype,
                                                         device=self.device, attn_implementation=attn_implementation)
        self.batch_size, self.max_tokens, self.progress = batch_size, max_tokens, progress
        self.last_stats: dict = {}

    def encode(self, prompts: Sequence[Any], responses_a: Sequence[Any], responses_b: Sequence[Any],
               tta: bool = True) -> list[list[int]]:
        """Token ids exactly as in training: straight rows, then (``tta``) the A/B-swapped rows."""
        p, a, b = _texts(prompts, "prompts"), _texts(responses_a, "responses_a"), _texts(responses_b, "responses_b")
        if not (len(p) == len(a) == len(b)):
            raise ValueError(f"prompts, responses_a, responses_b differ in length: {len(p)}, {len(a)}, {len(b)}")
        straight, swapped = at.encode_batch_both(self.tokenizer, p, a, b, **self.encode_kwargs)
        return straight.input_ids + (swapped.input_ids if tta else [])

    def predict(self, prompts: Sequence[Any], responses_a: Sequence[Any], responses_b: Sequence[Any],
                tta: bool = True) -> np.ndarray:
        """``[N, 3]`` float64 probabilities (A wins, B wins, tie), rows in input order, each summing to 1."""
        from .metrics import softmax
        from .predict import tta_combine
        from .scoring import score_classifier

        n = len(prompts)
        if n == 0:
            return np.zeros((0, 3), dtype=np.float64)
        sequences = self.encode(prompts, responses_a, responses_b, tta=tta)
        idx, logits, self.last_stats = score_classifier(
            self.model, sequences, self.tokenizer.pad_token_id, batch_size=self.batch_size,
            max_tokens=self.max_tokens, device=self.device, desc="judge", progress=self.progress)
        if len(idx) != len(sequences):
            raise RuntimeError(f"scored {len(idx)} of {len(sequences)} sequences")
        probs = softmax(logits.astype(np.float64))
        out = tta_combine(probs[:n], probs[n:] if tta else None)
        return out / out.sum(axis=1, keepdims=True)  # exact sums (the mean of two softmaxes is already ~1)
