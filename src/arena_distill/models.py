"""Tokenizer and model loading, LoRA / QLoRA setup, adapter I/O.

One code path for every size: the tiny random-weight checkpoints of the CPU profile and the real
70B teachers are both plain ``from_pretrained`` folders. Classifiers are built with
``AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)`` from causal-LM
checkpoints, so the score head is new and must be trained (and saved through ``modules_to_save``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .dist import pick_device, pick_dtype, warn0
from .io import StageInputError
from .readers import (check_adapter_folder, check_model_folder, check_safetensors, check_tokenizer_folder, loading,
                      read_json)

# Keep imports of transformers/peft quiet and offline: nothing may be fetched from a hub here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HEAD_NAMES = ("score", "classifier")


def model_folder(model_dir: str | os.PathLike, name: str, run_first: str = "sh run_data.sh") -> Path:
    """``<model_dir>/<name>`` checked to be a loadable checkpoint folder."""
    path = Path(model_dir) / name
    if not (path / "config.json").is_file():
        raise StageInputError(
            f"model '{name}' not found: {path}/config.json is missing"
            f" -> put the checkpoint there (see model_path/README.md), or for the tiny profile run first: "
            f"{run_first}")
    return path


def load_tokenizer(path: str | os.PathLike, padding_side: str = "right", pad: str = "eos"):
    """The tokenizer of a checkpoint folder, the one place where the padding token is chosen.

    ``pad="eos"`` (every classifier stage, as the seed: ``tokenizer.pad_token_id = tokenizer.eos_token_id``
    in src/prepare_data.py:19, the training scripts and src/predict_test.py:37, with right padding): the
    padding id is EOS for every model. The sequence classifier then pools the last position whose id is
    not the pad id (transformers 5.23.0 ``GenericForSequenceClassification.forward``, modeling_layers.py:176-178:
    ``(token_indices * (input_ids != pad_token_id)).argmax(-1)``), so the appended EOS counts as padding
    and the score head reads the token *before* the final EOS, for Gemma-2, Llama-3 and Qwen2 alike.
    ``pad="own"``: keep the tokenizer's own pad token (EOS only when it has none, e.g. Llama-3), so the
    head would read the EOS itself. The causal-LM reasoning stages (20-25) are unaffected either way:
    their labels are padded with -100 and attention masks hide padding; they use the default.
    """
    from transformers import AutoTokenizer

    if pad not in ("eos", "own"):
        raise ValueError(f"pad must be 'eos' or 'own', got {pad!r}")
    check_tokenizer_folder(path)  # a missing/corrupt file is named, not a transformers traceback
    with loading(path, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(path))
    if tok.eos_token_id is None:
        raise StageInputError(f"{path}: the tokenizer has no EOS token (every encoded row ends with one)")
    if pad == "eos" or tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def quantization_config(quant: str | None, compute_dtype: torch.dtype):
    """``nf4`` (QLoRA teachers) / ``int8`` through bitsandbytes, or None."""
    if not quant:
        return None
    from transformers import BitsAndBytesConfig

    if quant == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {quant!r} (expected nf4, int8 or empty)")


def _common_kwargs(dtype: torch.dtype, quant: str | None, attn_implementation: str | None,
                   device_map: Any) -> dict:
    kwargs: dict[str, Any] = {"dtype": dtype}
    qconf = quantization_config(quant, dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        if device_map is None:
            # k-bit weights are placed at load time; under launchers one process = one device.
            device = pick_device()
            device_map = {"": device.index if device.type == "cuda" else "cpu"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_classifier(path: str | os.PathLike, *, num_labels: int = 3, dtype: str | torch.dtype = "auto",
                    quant: str | None = None, attn_implementation: str | None = None, device_map: Any = None,
                    pad_token_id: int | None = None):
    """A 3-class sequence classifier from a causal-LM (or classifier) checkpoint folder."""
    from transformers import AutoModelForSequenceClassification

    torch_dtype = pick_dtype(dtype) if isinstance(dtype, str) else dtype
    check_model_folder(path)  # missing config / truncated weights: named, not a safetensors traceback
    with loading(path):
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=num_labels, **_common_kwargs(torch_dtype, quant, attn_implementation, device_map))
    if pad_token_id is not None:
        # The classifier pools the last non-pad token: it must know which id is padding.
        model.config.pad_token_id = pad_token_id
    return model


def load_causal_lm(path: str | os.PathLike, *, dtype: str | torch.dtype = "auto", quant: str | None = None,
                   attn_implementation: str | None = None, device_map: Any = None):
    from transformers import AutoModelForCausalLM

    torch_dtype = pick_dtype(dtype) if isinstance(dtype, str) else dtype
    check_model_folder(path)
    with loading(path):
        return AutoModelForCausalLM.from_pretrained(
            str(path), **_common_kwargs(torch_dtype, quant, attn_implementation, device_map))


def add_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str] | str,
             task: str = "SEQ_CLS", train_head: bool = True, gradient_checkpointing: bool = False):
    """Wrap ``model`` with a fresh LoRA; for classifiers the score head is trainable and saved."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # Non-reentrant checkpointing, explicitly: peft 0.21.2 passes its empty default kwargs on, so torch
        # would fall back to the reentrant variant (which torch has announced will raise without the flag).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_frozen_in_compute_dtype(model)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets: list[str] | str = "all-linear" if target_modules in ("all-linear", ["all-linear"]) else list(target_modules)
    head = [n for n in HEAD_NAMES if hasattr(model, n)] if (task == "SEQ_CLS" and train_head) else None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type=task, modules_to_save=head or None, bias="none")
    return hold_trainables_in_fp32(get_peft_model(model, config))


def hold_trainables_in_fp32(model):
    """Cast every trainable tensor (LoRA A/B, the ``modules_to_save`` score head) to fp32, whatever the base
    dtype; returns the model. Idempotent.

    peft's ``autocast_adapter_dtype`` upcasts LoRA weights only; the score head copy keeps the base dtype, and
    torch AdamW on bf16 weights rounds most small updates away (44% of a bf16 head's elements never moved in
    200 steps at lr 5e-5). LoRA layers cast their input to the adapter dtype themselves (peft lora
    ``_cast_input_dtype``); a fp32 head gets a pre-hook that does the same, so it also runs without autocast.
    """
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if (own and all(p.requires_grad and p.dtype == torch.float32 for p in own)
                and isinstance(module, torch.nn.Linear) and not getattr(module, "_fp32_input_hook", False)
                and "lora_" not in type(module).__name__):
            module.register_forward_pre_hook(_inputs_to_weight_dtype)
            module._fp32_input_hook = True
    return model


def _inputs_to_weight_dtype(module, args):
    # The weight's dtype at call time, not fp32: DeepSpeed bf16 casts the whole module to bf16 at initialize
    # (its fp32 master copy lives in the optimizer), and the input must follow.
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def keep_frozen_in_compute_dtype(model, dtype: torch.dtype | None = None) -> int:
    """Undo peft's fp32 upcast of the frozen non-k-bit weights; returns the number of tensors re-cast.

    peft 0.21.2 ``prepare_model_for_kbit_training`` (peft/utils/other.py) casts *every* fp16/bf16
    parameter that is not ``Params4bit`` to fp32: embeddings, norms and lm_head. The fp32 embedding output
    then makes every residual activation fp32 and the lm_head logits fp32: at stage 22's cutoff 10,240 on a
    70B that is ~93 GB per GPU (src/plan.py shows it). LLaMA-Factory (the seed's trainer) keeps them in
    the compute dtype; so do we: frozen floating tensors go back to the 4-bit compute dtype (bf16), while
    trainable tensors (LoRA, the score head) keep whatever dtype the engine gives them.
    """
    if dtype is None:
        qconf = getattr(getattr(model, "config", None), "quantization_config", None)
        dtype = getattr(qconf, "bnb_4bit_compute_dtype", None) if not isinstance(qconf, dict) \
            else qconf.get("bnb_4bit_compute_dtype")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.replace("torch.", ""))
        dtype = dtype or torch.bfloat16
    n = 0
    for param in model.parameters():
        if (not param.requires_grad and param.dtype is torch.float32
                and param.__class__.__name__ not in ("Params4bit", "Int8Params")):
            param.data = param.data.to(dtype)
            n += 1
    return n


def init_lora_from_adapter(peft_model, adapter_dir: str | os.PathLike, drop_head: bool = True) -> int:
    """Load LoRA A/B weights of a saved adapter into ``peft_model`` (e.g. the post-pretrained adapter as
    the start of fold training). The saved score head is dropped when ``drop_head`` (the seed throws it
    away: the new task's head starts fresh). Returns the number of tensors loaded."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    file = Path(adapter_dir) / "adapter_model.safetensors"
    if not file.is_file():
        raise StageInputError(f"adapter weights missing: {file}")
    check_safetensors(file, adapter_dir, fix="re-run the stage that trains it")
    state = load_file(str(file))
    if drop_head:
        # Keep this model's freshly initialised head: peft expects the head keys, so put the current ones.
        is_head = lambda key: any(f"{h}." in key for h in HEAD_NAMES)  # noqa: E731
        state = {k: v for k, v in state.items() if not is_head(k)}
        state.update({k: v for k, v in get_peft_model_state_dict(peft_model).items() if is_head(k)})
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise StageInputError(f"{file}: {len(unexpected)} tensors do not fit this model/LoRA config "
                              f"(e.g. {unexpected[0]}); was it trained with the same r / target modules?")
    return len(state)


def load_peft(model, adapter_dir: str | os.PathLike, trainable: bool = False):
    from peft import PeftModel

    check_adapter_folder(adapter_dir)
    with loading(adapter_dir, "adapter", fix="re-run the stage that trains it"):
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def describe(model) -> str:
    trainable, total = count_params(model)
    return f"trainable {trainable:,} / total {total:,} params ({100 * trainable / max(total, 1):.3f}%)"


def check_not_quantized(path: str | os.PathLike) -> None:
    """Merging LoRA into already-quantized weights is lossy/undefined: refuse (LLaMA-Factory does too)."""
    cfg = Path(path) / "config.json"
    if cfg.is_file() and "quantization_config" in read_json(cfg):
        raise StageInputError(f"{path} is a quantized checkpoint; merge adapters into the full-precision base "
                              "model, then quantize the merged result")


def warn_if_cpu_quant(quant: str | None) -> str | None:
    """bitsandbytes 4-bit works on CPU but is slow and not what the CPU profile measures; keep it explicit."""
    if quant and not torch.cuda.is_available():
        warn0(f"quantization '{quant}' requested without CUDA: running bitsandbytes on CPU (slow)")
    return quant
