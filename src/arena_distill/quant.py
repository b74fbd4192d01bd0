"""GPTQ quantization through GPTQModel (the maintained successor of AutoGPTQ), CPU or GPU.

Two routes, because they are not interchangeable (measured, see ``../shared/ENVIRONMENT.md``):

* **Sequence classifiers** (the LMSYS student): transformers ``GPTQConfig`` (optimum, backed by
  GPTQModel kernels). ``GPTQModel.load`` would silently load a classifier as a causal LM and drop the
  trained score head, so it must not be used for them.
* **Causal LMs** (the reasoning flow): ``GPTQModel.load(dir, QuantizeConfig).quantize(...).save(...)``.

Both write the output folder atomically (built under a temporary name, renamed when complete) with the
tokenizer inside, so the folder alone is enough to predict. Calibration data may be given as strings
(tokenized here, truncated to ``max_length``) or as token id lists (already templated/truncated).

On CPU GPTQModel needs ``GPTQMODEL_CPU_WORKERS`` on small machines (2 cores: its default worker pool
fails); it is set to 2 here when unset, before gptqmodel is imported.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch  # noqa: E402

from .io import StageInputError, atomic_dir  # noqa: E402
from .readers import read_json  # noqa: E402

SUPPORTED_BITS = (2, 3, 4, 8)


# ---------------------------------------------------------------------------------------------------
# calibration data


def _as_id_lists(texts: Sequence[str] | Sequence[Sequence[int]], tokenizer, max_length: int | None
                 ) -> list[list[int]]:
    """Token id lists from strings (tokenized + truncated) or from id lists (truncated)."""
    if len(texts) == 0:
        raise ValueError("calibration set is empty")
    if isinstance(texts[0], str):
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to tokenize calibration strings")
        enc = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length,
                        add_special_tokens=True)
        ids = [list(map(int, x)) for x in enc["input_ids"]]
    else:
        ids = [list(map(int, x))[:max_length] if max_length else list(map(int, x)) for x in texts]
    ids = [x for x in ids if len(x) > 0]
    if not ids:
        raise ValueError("calibration set has no non-empty example")
    return ids


def calibration_examples(texts: Sequence[str] | Sequence[Sequence[int]], tokenizer=None,
                         max_length: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Pre-tokenized calibration examples in the form optimum's GPTQ quantizer takes as is
    (``[{"input_ids": LongTensor[1, L], "attention_mask": LongTensor[1, L]}]``). Passing strings to
    ``GPTQConfig`` instead would tokenize them without truncation (a 30k-character response would make
    a 10k-token calibration row) and store every text in the saved ``config.json``."""
    out = []
    for ids in _as_id_lists(texts, tokenizer, max_length):
        t = torch.tensor([ids], dtype=torch.long)
        out.append({"input_ids": t, "attention_mask": torch.ones_like(t)})
    return out


def _check_bits(bits: int, group_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"GPTQ bits must be one of {SUPPORTED_BITS}, got {bits}")
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be > 0 or -1 (one group per row), got {group_size}")


def is_quantized(model_dir: str | os.PathLike) -> bool:
    cfg = Path(model_dir) / "config.json"
    return cfg.is_file() and "quantization_config" in read_json(cfg)


def _default_device_map() -> Any:
    return {"": 0} if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------------
# sequence classifiers: transformers GPTQConfig (keeps the score head)


def quantize_classifier(merged_dir: str | os.PathLike, out_dir: str | os.PathLike,
                        texts: Sequence[str] | Sequence[Sequence[int]], tokenizer, bits: int = 8,
                        group_size: int = 128, *, max_length: int | None = 2100, desc_act: bool = False,
                        sym: bool = True, damp_percent: float = 0.1, batch_size: int = 1,
                        dtype: torch.dtype | None = None, device_map: Any = None,
                        max_shard_size: str = "5GB") -> dict[str, Any]:
    """GPTQ-quantize a full-precision sequence classifier folder into ``out_dir`` (tokenizer included).

    ``texts``: calibration rows, strings or token id lists built with the training template; each is
    truncated to ``max_length`` tokens. The score head stays in full precision (GPTQ quantizes the
    linear layers inside the decoder blocks only). Returns a summary dict (bits, seconds, ...).
    """
    from transformers import AutoModelForSequenceClassification, GPTQConfig

    _check_bits(bits, group_size)
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    if not (merged_dir / "config.json").is_file():
        raise StageInputError(f"no model to quantize at {merged_dir} (config.json missing)")
    if is_quantized(merged_dir):
        raise StageInputError(f"{merged_dir} is already quantized; quantize the full-precision merged model")
    examples = calibration_examples(texts, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer is not None else None
    qconfig = GPTQConfig(bits=bits, group_size=group_size, dataset=examples, tokenizer=tokenizer,
                         desc_act=desc_act, sym=sym, damp_percent=damp_percent, batch_size=batch_size,
                         pad_token_id=pad_id, model_seqlen=max_length)
    if dtype is None:
        from .dist import pick_dtype

        # bf16 where the GPU has it (Gemma2 overflows in fp16), fp16 on T4, fp32 on CPU
        dtype = pick_dtype("auto")
    from .readers import check_model_folder

    check_model_folder(merged_dir)  # truncated weights: named, not a safetensors traceback
    start = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(
        str(merged_dir), quantization_config=qconfig, dtype=dtype,
        device_map=device_map if device_map is not None else _default_device_map())
    seconds = time.perf_counter() - start
    # The calibration tensors would otherwise be serialised into config.json.
    model.config.quantization_config.dataset = None
    model.config.quantization_config.tokenizer = None
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    del model
    lengths = [int(e["input_ids"].shape[1]) for e in examples]
    return {"route": "transformers GPTQConfig (gptqmodel kernels)", "bits": bits, "group_size": group_size,
            "desc_act": desc_act, "sym": sym, "damp_percent": damp_percent, "n_calibration": len(examples),
            "calibration_tokens_mean": sum(lengths) / len(lengths), "calibration_max_length": max_length,
            "quantize_seconds": round(seconds, 2), "dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------------------------------------------
# causal LMs: GPTQModel's own loader


def quantize_causal_lm(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       calibration_texts: Sequence[str] | Sequence[Sequence[int]], bits: int = 4,
                       group_size: int = 128, *, tokenizer=None, max_length: int | None = 2048,
                       desc_act: bool = False, sym: bool = True, damp_percent: float = 0.05,
                       batch_size: int = 1, device: str | None = None,
                       qcfg_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """GPTQ-quantize a causal-LM folder with ``GPTQModel.load(...).quantize(...).save(...)``.

    ``calibration_texts`` (strings or token id lists) are truncated to ``max_length`` tokens with the
    model's tokenizer (or ``tokenizer``). Not for classifiers: GPTQModel drops their score head.
    ``qcfg_extra``: further ``QuantizeConfig`` fields (e.g. ``act_group_aware``), recorded in the summary.
    Returns a summary dict.
    """
    from gptqmodel import GPTQModel, QuantizeConfig

    _check_bits(bits, group_size)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise StageInputError(f"no model to quantize at {model_dir} (config.json missing)")
    if is_quantized(model_dir):
        raise StageInputError(f"{model_dir} is already quantized; quantize the full-precision merged model")
    arch = read_json(model_dir / "config.json").get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in arch):
        raise ValueError(f"{model_dir} is a sequence classifier ({arch[0]}); GPTQModel.load would drop its "
                         "score head: use quantize_classifier")
    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
    ids = _as_id_lists(calibration_texts, tokenizer, max_length)
    calibration = [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]
    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    qcfg = QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym,
                          damp_percent=damp_percent, **(qcfg_extra or {}))
    start = time.perf_counter()
    model = GPTQModel.load(str(model_dir), qcfg, device=device)
    # calibration_data_min_length=1: tiny test sets have short rows; GPTQModel's default drops < 10 tokens.
    model.quantize(calibration, batch_size=batch_size, tokenizer=tokenizer, calibration_data_min_length=1)
    seconds = time.perf_counter() - start
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        if not (tmp / "tokenizer_config.json").is_file():
            tokenizer.save_pretrained(str(tmp))
    del model
    return {"route": "GPTQModel.load/quantize/save", "bits": bits, "group_size": group_size,
            "desc_act": desc_act, "sym": sym, "damp_percent": damp_percent, **(qcfg_extra or {}),
            "n_calibration": len(ids), "calibration_tokens_mean": sum(map(len, ids)) / len(ids), "calibration_max_length": max_length,
            "quantize_seconds": round(seconds, 2), "device": device}


# ---------------------------------------------------------------------------------------------------
# loading: a kernel that needs no compiler and no download, with fallback

# gptqmodel 7.6.0 ships no prebuilt CUDA kernels. Its BACKEND.AUTO order (utils/importer.py,
# AUTO_BACKEND_KERNEL_MAPPING) puts Machete and Marlin first on any CUDA machine: Marlin is JIT-compiled
# with a local `nvcc` and the CUDA headers on first use (utils/marlin.py: "Marlin JIT also requires a local
# `nvcc` on PATH"), and Machete (sm90) first downloads CUTLASS 4.7.1 from GitHub (utils/machete.py,
# _CUTLASS_RELEASE_URL). Kaggle's offline notebook has neither, and neither falls back when it fails.
# Exllama v2 is 4-bit only and also JIT-compiled. `gptq_torch` (nn_modules/qlinear/torch.py, TorchLinear)
# needs no nvcc and no download: 2-8 bits, any device, fp16/bf16. It is not compiler-free either, though:
# post_init() wraps its dequantization in torch.compile (inductor) and, when triton is importable, uses a
# Triton dequant kernel (GPTQ_TORCH_TRITON_DEQUANT): Triton brings its own ptxas but builds a small launcher
# with the host C compiler. So the chain on every GPU is gptq_torch, then `gptq_torch_eager` (our name: the
# same layers with compile and Triton switched off, plain eager torch, nothing built at all). For
# prediction (a classifier's prefill over 2,000-token rows) per-forward dequantization is a few percent of
# the matmul time; generation (decode-bound) is where a faster kernel pays: ask for one with
# `kernel=gptq_marlin` etc. and the chain still ends in the no-build kernels.
NO_BUILD_KERNEL = {
    (7, 5): "gptq_torch",   # T4: Marlin needs nvcc and refuses bf16 on sm75; Exllama v2 needs nvcc
    (8, 0): "gptq_torch",   # A100: Marlin / Exllama v2 need nvcc
    (9, 0): "gptq_torch",   # H100: Machete downloads CUTLASS, Marlin needs nvcc
}
EAGER = "gptq_torch_eager"
KERNELS = ("auto", "gptq_torch", EAGER, "gptq_triton", "gptq_marlin", "gptq_exllama_v2", "gptq_machete",
           "gptq_bitblas", "gptq_torch_fused", "gptq_torch_aten")


def gptq_kernels(capability: tuple[int, int] | None, requested: str = "auto") -> list[str]:
    """Kernels to try, in order, for a GPU of ``capability`` (None = CPU).

    ``auto`` on a GPU = the kernel pinned for that target (the closest listed capability at or below it),
    then its eager form; a named kernel is tried first with those as the fallback. On the CPU GPTQModel's
    own ``auto`` only picks torch kernels (no nvcc, no download), so it is kept."""
    if requested not in KERNELS:
        raise ValueError(f"unknown GPTQ kernel {requested!r} (expected one of {', '.join(KERNELS)})")
    if capability is None:
        return ["auto"] if requested == "auto" else [requested, "auto"]
    known = [c for c in sorted(NO_BUILD_KERNEL) if c <= tuple(capability)]
    pinned = NO_BUILD_KERNEL[known[-1]] if known else "gptq_torch"
    chain = [pinned, EAGER] if requested == "auto" else [requested, pinned, EAGER]
    return list(dict.fromkeys(chain))


def make_eager(model) -> int:
    """Switch every TorchLinear of ``model`` to plain eager dequantization: no torch.compile wrapper, no
    Triton kernel (see the note above NO_BUILD_KERNEL). Returns the number of layers switched."""
    n = 0
    for m in model.modules():
        if type(m).__name__ == "TorchLinear":
            m.__dict__.pop("dequantize_weight", None)  # the torch.compile wrapper set by optimize()
            m._triton_dequant_enabled = False
            n += 1
    return n


def quantization_bits(model_dir: str | os.PathLike) -> int:
    from .readers import read_json

    cfg = read_json(Path(model_dir) / "config.json", fix="re-run the stage that wrote it").get("quantization_config")
    if not isinstance(cfg, dict) or "bits" not in cfg:
        raise StageInputError(f"{model_dir}/config.json has no GPTQ quantization_config")
    return int(cfg["bits"])


def kernel_in_use(model) -> str:
    """Class name of the first quantized linear layer (e.g. ``TorchLinear``), '' if none."""
    for m in model.modules():
        if hasattr(m, "qweight"):
            return type(m).__name__
    return ""


def load_gptq(model_dir: str | os.PathLike, *, task: str = "SEQ_CLS", dtype: torch.dtype,
              device: torch.device, kernel: str = "auto", capability: tuple[int, int] | None = None,
              **from_pretrained: Any):
    """A GPTQ checkpoint loaded with the first kernel of ``gptq_kernels`` that loads *and* runs.

    A short warm-up forward follows each load, because JIT kernels fail at first use rather than at
    load time; a failing kernel is reported and the next one tried. Raises with every kernel's error
    when none works. ``from_pretrained``: extra keyword arguments (num_labels, attn_implementation, ...).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPTQConfig

    from .dist import warn0

    if capability is None and device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
    cls = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
    bits = quantization_bits(model_dir)
    device_map = {"": device.index or 0} if device.type == "cuda" else "cpu"
    errors = []
    for backend in gptq_kernels(capability, kernel):
        model = None
        try:
            # Only the loading attributes (backend, max_input_length) of this config are used: the rest
            # comes from the checkpoint's own quantization_config (transformers merge_quantization_configs).
            qconf = GPTQConfig(bits=bits, backend="gptq_torch" if backend == EAGER else backend)
            with warnings.catch_warnings():  # "loading attributes ... will be overwritten": intended
                warnings.filterwarnings("ignore", message="You passed `quantization_config`")
                model = cls.from_pretrained(str(model_dir), quantization_config=qconf, dtype=dtype,
                                            device_map=device_map, **from_pretrained)
            if backend == EAGER and not make_eager(model):
                raise RuntimeError("no TorchLinear layer to switch to eager")
            with torch.inference_mode():
                model(input_ids=torch.tensor([[1, 2, 3, 4]], device=device))
            return model
        except Exception as exc:  # noqa: BLE001 - any kernel failure (build, import, runtime) -> next kernel
            errors.append(f"{backend}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            warn0(f"GPTQ kernel {backend} failed on {model_dir} ({errors[-1]}); trying the next one")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError(f"no GPTQ kernel could load and run {model_dir}:\n  " + "\n  ".join(errors)
                       + "\n  -> docs/gpu.md (GPTQ kernels): gptq_torch needs nothing but torch and gptqmodel")
