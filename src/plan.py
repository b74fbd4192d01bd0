"""Plan before you spend: parameters, per-GPU memory and hours of every stage of a profile on a machine.

    python src/plan.py --config configs/a100x8.yaml --hardware 8xA100-80GB
    python src/plan.py --config configs/kaggle_2xt4.yaml            # the profile's own machine
    python src/plan.py --config configs/1x24gb.yaml --json plan.json --strict   # exit 1 if a stage won't fit

No weights are loaded and nothing is downloaded. Each stage's real architecture is built on the meta
device from the ``config.json`` shipped in ``configs/models/<name>/`` (public values of Llama-3-70B,
Qwen2-72B, Gemma-2-9B, Llama-3.1-70B; ``<model_dir>/<name>/config.json`` is used for other names), our
own ``models.add_lora`` is applied to it, and the trainable parameters are counted from the result.

Per stage it prints: total / trainable parameters; per-GPU memory = frozen weights at their bits
+ trainable model states under the ZeRO stage (cross-checked with DeepSpeed's own estimator)
+ activations (gradient checkpointing: one saved hidden state per layer plus one layer's working set)
+ attention scores (eager attention: Gemma-2) + logits + CUDA context; rows, optimizer steps, tokens;
hours from FLOPs at a stated MFU. What does not fit is flagged with the knob to turn.

The numbers are estimates from stated formulas (printed assumptions, functions below), not measurements;
``bench/gpu_check.sh`` measures the ones that matter on a real GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arena_distill import config as C  # noqa: E402
from arena_distill.dist import dtype_for_capability  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO / "configs" / "models"
GIB = 1024 ** 3

# ----------------------------------------------------------------------------------------------- machines


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    n_gpus: int
    gib: float             # usable memory per GPU (what torch can allocate)
    tflops: float          # dense tensor-core peak per GPU in the dtype the rule picks (bf16, fp16 on T4)
    hbm_tbs: float         # memory bandwidth per GPU, TB/s (decode-bound generation)
    capability: tuple[int, int] | None   # None: CPU (fp32)


HARDWARE = {h.name: h for h in (
    Hardware("8xA100-80GB", 8, 79.2, 312.0, 2.0, (8, 0)),
    Hardware("8xH100-80GB", 8, 79.1, 989.0, 3.35, (9, 0)),
    Hardware("1xH100-80GB", 1, 79.1, 989.0, 3.35, (9, 0)),
    Hardware("1x24GB", 1, 23.5, 70.0, 0.6, (8, 6)),        # A10G-class (RTX 3090/4090, L4 are faster)
    Hardware("2xT4-16GB", 2, 14.6, 65.0, 0.32, (7, 5)),    # Kaggle: 14.6 GiB usable of 15 GiB
    Hardware("cpu-16GB", 1, 16.0, 1.0, 0.05, None),        # the tiny CPU profile (2 cores: ~1 TFLOPS is generous)
)}

# What each shipped profile is for: (its machine, the stages it plans). tiny.yaml is the CPU twin; its
# models are built by stage 1, so it is planned with --hardware only once they exist.
LMSYS_TRAIN = ["post_pretrain", "teacher", "logits", "distill", "predict"]
PROFILES = {
    "a100x8.yaml": ("8xA100-80GB", LMSYS_TRAIN + ["logic_sft", "logic_eval"]),
    "1x80gb.yaml": ("1xH100-80GB", LMSYS_TRAIN + ["logic_sft", "logic_eval"]),
    "1x24gb.yaml": ("1x24GB", ["distill", "predict"]),
    "kaggle_2xt4.yaml": ("2xT4-16GB", ["predict"]),
    "tiny.yaml": ("cpu-16GB", LMSYS_TRAIN + ["logic_sft"]),   # needs the tiny models (stage 1): --model-dir
}

# Data sizes the plan assumes (the data stage reports the real ones in data/processed_data/report.md).
DATA = {
    "lmsys_train": 57_477,     # Kaggle train.csv rows
    "extra_33k": 33_000,       # the deduplicated 33k arena set (about; prompts also in train are dropped)
    "ut": 60_000,              # UltraFeedback-derived post-pretraining rows (assumed)
    "test": 25_000,            # Kaggle's hidden test set (about 25k rows)
    "fill": 0.6,               # mean real tokens / max_length of an LMSYS row at 1,024 (assumed; padding-free
                               # length-grouped batches make compute follow real tokens)
    "logic_questions": 1_421,  # Tianchi round-1 train questions (500 problems)
    "logic_sft_rows": 1_000,   # recovered self-reflection traces (assumed; stage 21 reports the count)
    "logic_sft_tokens": 3_000, # mean tokens per SFT row (assumed; cutoff 10,240 bounds the longest)
    "logic_new_tokens": 1_500, # mean generated tokens per answer (assumed; max_new_tokens bounds it)
}

# Model-FLOPs utilisation assumed per kind of work (stated, not measured: gpu_check.sh measures predict).
MFU = {"lora": 0.35, "qlora": 0.25, "score": 0.40, "score_kbit": 0.30, "score_gptq": 0.30}
CUDA_CONTEXT_GIB = 1.0      # CUDA context + allocator slack per process
HEADROOM = 0.92             # plan to 92% of usable memory: fragmentation, spikes
WORKING_DAY_H = 10          # a stage longer than this is flagged with what it takes to shorten it


# ------------------------------------------------------------------------------------- architecture


def model_config(name: str, model_dir: str, num_labels: int | None = None):
    from transformers import AutoConfig

    for folder in (SHIPPED_MODELS / name, Path(model_dir) / name):
        if (folder / "config.json").is_file():
            kw = {"num_labels": num_labels} if num_labels else {}
            return AutoConfig.from_pretrained(str(folder), **kw)
    raise C.ConfigError(f"plan: no config.json for model '{name}' in {SHIPPED_MODELS} or {model_dir}/ "
                        "(ship the public config.json there, or build the tiny models with stage 1)")


_ARCH_CACHE: dict = {}


def build_on_meta(name: str, model_dir: str, task: str, lora: dict | None) -> dict:
    """Counts from the real architecture on the meta device, with our own LoRA code applied."""
    key = (name, task, json.dumps(lora, sort_keys=True))
    if key in _ARCH_CACHE:
        return _ARCH_CACHE[key]
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from arena_distill.models import add_lora

    cfg = model_config(name, model_dir, 3 if task == "SEQ_CLS" else None)
    cls = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(cfg, dtype=torch.bfloat16)
        layers = model.base_model.layers
        # bitsandbytes / GPTQ quantize the nn.Linear layers inside the decoder blocks only
        linear_in_blocks = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
        total = sum(p.numel() for p in model.parameters())
        if lora:
            model = add_lora(model, task=task, **lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if lora else 0
    largest = max((m.weight.numel() for m in model.modules()
                   if hasattr(m, "weight") and isinstance(getattr(m, "weight"), torch.nn.Parameter)
                   and m.weight.requires_grad), default=0) if lora else 0
    out = {"total": total, "trainable": trainable, "linear_in_blocks": linear_in_blocks, "largest_trainable": largest,
           "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
           "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
           "kv_heads": cfg.num_key_value_heads, "mlp": cfg.intermediate_size, "vocab": cfg.vocab_size,
           "eager": cfg.model_type == "gemma2"}  # Gemma-2: eager attention (softcapping), L x L scores
    _ARCH_CACHE[key] = out
    return out


# ---------------------------------------------------------------------------------------- memory


def weight_bytes(arch: dict, quant: str, bits: int | None = None, group_size: int = 128,
                 dense_bytes: int = 2) -> float:
    """Frozen weights: decoder-block linears at the quantized width, the rest (embeddings, norms, head) in 16 bit.
    nf4 + double quant: 4 bits + 8-bit absmax per 64 + fp32 per 256 of those = 4.127 bits.
    GPTQ: bits + fp16 scale and packed zero per group."""
    per = {"nf4": 4.127, "int8": 8.0 + 32 / 64 / 8, "": 8.0 * dense_bytes}
    if quant == "gptq":
        lin_bits = bits + (16 + bits) / group_size
    else:
        lin_bits = per[quant]
    lin = arch["linear_in_blocks"]
    return lin * lin_bits / 8 + (arch["total"] - lin) * dense_bytes


def model_state_bytes(trainable: int, zero: int, n_gpus: int, largest: int = 0) -> float:
    """Trainable weights + gradients + AdamW states per GPU.
    DeepSpeed (bf16 mixed precision) keeps 16-bit params (2 B), 16-bit grads (2), fp32 grads (4), fp32 master
    params (4) and Adam m, v (8): ZeRO-2 partitions all but the 16-bit params; ZeRO-3 those too (plus the
    largest layer gathered, 4 B/param). Without DeepSpeed (one GPU / DDP) every GPU holds fp32 params,
    fp32 grads and Adam m, v: 16 B/param."""
    if zero == 2:
        return 2 * trainable + 18 * trainable / n_gpus
    if zero == 3:
        return 4 * largest + 18 * trainable / n_gpus
    return 16.0 * trainable


def deepspeed_estimate(trainable: int, zero: int, n_gpus: int, largest: int) -> float | None:
    """DeepSpeed's own estimator (runs on CPU, no model needed), for the cross-check."""
    if zero == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return float(estimate_zero2_model_states_mem_needs(trainable, n_gpus, 1, cpu_offload=False)[1])
    if zero == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        return float(estimate_zero3_model_states_mem_needs(trainable, largest, n_gpus, 1, cpu_offload=False)[1])
    return None


def layer_working_elems(arch: dict, tokens: int, lora: bool) -> float:
    """Elements alive while one decoder layer runs forward+backward: norms, q/k/v/o, MLP gate/up/act/product,
    residuals (and the LoRA dropout copies of each linear's input when training)."""
    h, kv, mlp = arch["hidden"], arch["kv_heads"] * arch["head_dim"], arch["mlp"]
    attn = arch["heads"] * arch["head_dim"]
    per_token = 4 * h + 2 * attn + 2 * kv + 4 * mlp + (3 * h + attn + 2 * h + mlp if lora else 0)
    return per_token * tokens


def attention_score_bytes(arch: dict, rows: int, length: int, act_bytes: int) -> float:
    """Eager attention materialises rows x heads x L x L scores: the 16-bit scores plus softmax's fp32 output
    (``softmax(dtype=float32)``) alive together = act_bytes + 4 bytes per element (sdpa/flash: none)."""
    if not arch["eager"]:
        return 0.0
    return rows * arch["heads"] * length * length * (act_bytes + 4)


def logits_bytes(arch: dict, task: str, tokens: int, fp32_head: bool, training: bool) -> float:
    """Classifier: tokens x 3 (nothing). Causal LM: tokens x vocab logits (16-bit, or fp32 after peft's
    k-bit upcast of lm_head), the loss's fp32 copy and log-softmax, and their gradient when training."""
    if task == "SEQ_CLS":
        return tokens * 3 * 4.0
    per = (4 if fp32_head else 2) + (4 + 4 if training else 4)
    return tokens * arch["vocab"] * per


# ------------------------------------------------------------------------------------------- stages


@dataclasses.dataclass
class StagePlan:
    stage: str
    model: str
    notes: list[str] = dataclasses.field(default_factory=list)
    total: int = 0
    trainable: int = 0
    weights_gib: float = 0.0
    states_gib: float = 0.0
    deepspeed_gib: float | None = None
    activations_gib: float = 0.0
    attention_gib: float = 0.0
    logits_gib: float = 0.0
    per_gpu_gib: float = 0.0
    usable_gib: float = 0.0
    rows: int = 0
    steps: int = 0
    tokens: float = 0.0
    hours: float = 0.0
    mfu: float = 0.0
    fits: bool = True
    knob: str = ""


def _sec(profile: dict, section: str) -> dict:
    return {**profile.get("common", {}), **(profile.get(section) or {})}


def _lora(s: dict, r_default: int = 64) -> dict:
    return {"r": int(s.get("lora_r", r_default)), "alpha": int(s.get("lora_alpha", 2 * r_default)),
            "dropout": float(s.get("lora_dropout", 0.05)), "target_modules": s.get("target_modules", ["all-linear"])}


def plan_training(stage: str, model: str, task: str, s: dict, hw: Hardware, *, rows: int, epochs: float,
                  max_length: int, mean_tokens: float, quant: str, zero: int, model_dir: str,
                  fp32_head: bool = False) -> StagePlan:
    arch = build_on_meta(model, model_dir, task, _lora(s))
    p = StagePlan(stage, model, total=arch["total"], trainable=arch["trainable"])
    micro = int(s.get("micro_batch", 1))
    ckpt = bool(s.get("gradient_checkpointing", True))
    # peft's k-bit upcast makes the residual stream fp32; so does a CPU (fp32) run
    act_bytes = 4 if fp32_head or hw.capability is None else 2
    tokens_mb = micro * max_length
    p.weights_gib = weight_bytes(arch, quant, dense_bytes=act_bytes if not fp32_head else 2) / GIB
    if fp32_head:
        p.weights_gib += (arch["total"] - arch["linear_in_blocks"]) * 2 / GIB
    p.states_gib = model_state_bytes(arch["trainable"], zero, hw.n_gpus, arch["largest_trainable"]) / GIB
    ds = deepspeed_estimate(arch["trainable"], zero, hw.n_gpus, arch["largest_trainable"])
    p.deepspeed_gib = None if ds is None else ds / GIB
    saved = arch["layers"] * tokens_mb * arch["hidden"] * act_bytes
    working = layer_working_elems(arch, tokens_mb, lora=True) * act_bytes * (1 if ckpt else arch["layers"])
    p.activations_gib = (saved if ckpt else 0) / GIB + working / GIB
    p.attention_gib = attention_score_bytes(arch, micro, max_length, act_bytes) * (1 if ckpt else arch["layers"]) / GIB
    p.logits_gib = logits_bytes(arch, task, tokens_mb, fp32_head, training=True) / GIB
    p.rows = rows
    global_batch = int(s.get("global_batch", micro * hw.n_gpus))
    p.steps = math.ceil(rows * epochs / global_batch)
    p.tokens = rows * epochs * mean_tokens
    # forward 2N + backward input-gradients 2N (+ recompute 2N with checkpointing); LoRA weight grads ~0
    n_fwd = arch["total"] - (arch["vocab"] * arch["hidden"] if task == "SEQ_CLS" else 0)  # embeddings: lookups
    attn = 2 * arch["layers"] * arch["heads"] * arch["head_dim"] * mean_tokens  # causal QK^T + AV, per token
    flops = p.tokens * (2 * n_fwd + 2 * attn) * (3 if ckpt else 2)
    p.mfu = MFU["qlora" if quant else "lora"]
    p.hours = flops / (hw.n_gpus * hw.tflops * 1e12 * p.mfu) / 3600
    p.notes.append(f"micro_batch {micro} x {max_length} tokens, checkpointing {'on' if ckpt else 'off'}, "
                   f"{'ZeRO-' + str(zero) if zero else 'no DeepSpeed (DDP / one GPU)'}, quant {quant or 'none'}"
                   + (", frozen embeddings/lm_head upcast to fp32" if fp32_head else ""))
    return _finish(p, hw, knob=("micro_batch=1" if micro > 1 else "") or
                   ("gradient_checkpointing=true" if not ckpt else "") or ("quant=nf4" if not quant else "")
                   or "a larger GPU / ZeRO-3 (configs/accelerate/zero3.yaml)")


def plan_scoring(stage: str, model: str, hw: Hardware, *, rows: int, length: int, mean_tokens: float,
                 batch_size: int, max_tokens: int, quant: str, bits: int, dtype: torch.dtype,
                 model_dir: str, passes: int = 1) -> StagePlan:
    arch = build_on_meta(model, model_dir, "SEQ_CLS", None)
    p = StagePlan(stage, model, total=arch["total"])
    act_bytes = 4 if dtype is torch.float32 else 2
    batch_rows = max(1, min(batch_size, max_tokens // length)) if max_tokens else batch_size
    tokens_b = batch_rows * length
    p.weights_gib = weight_bytes(arch, quant, bits, dense_bytes=act_bytes) / GIB
    # No backward: only one phase of one layer is alive at a time. Peak = residual in/out + the larger of
    # the MLP phase (gate, up, product) and the attention phase (q, k, v, output + eager scores).
    h, mlp = arch["hidden"], arch["mlp"]
    attn, kv = arch["heads"] * arch["head_dim"], arch["kv_heads"] * arch["head_dim"]
    scores = attention_score_bytes(arch, batch_rows, length, act_bytes)
    mlp_phase = 3 * mlp * tokens_b * act_bytes
    attn_phase = (2 * attn + 2 * kv) * tokens_b * act_bytes
    p.activations_gib = (2 * h * tokens_b * act_bytes + max(mlp_phase, attn_phase + scores) - scores) / GIB
    p.attention_gib = scores / GIB
    p.rows = rows * passes
    p.tokens = p.rows * mean_tokens
    n_fwd = arch["total"] - arch["vocab"] * arch["hidden"]
    attn = 2 * arch["layers"] * arch["heads"] * arch["head_dim"] * mean_tokens
    p.mfu = MFU["score_gptq" if quant == "gptq" else "score_kbit" if quant else "score"]
    p.hours = p.tokens * (2 * n_fwd + attn) / (hw.n_gpus * hw.tflops * 1e12 * p.mfu) / 3600
    p.notes.append(f"batches of {batch_rows} rows x {length} tokens (max_tokens {max_tokens or 'unset'}), "
                   f"{str(dtype).replace('torch.', '')}, weights {quant or '16-bit'}"
                   f"{' ' + str(bits) + '-bit' if quant == 'gptq' else ''}"
                   f"{', x' + str(passes) + ' (TTA)' if passes > 1 else ''}")
    p = _finish(p, hw, knob="a larger GPU, or fewer bits")
    if not p.fits and batch_rows > 1 and p.knob.startswith("a larger"):
        fixed = p.per_gpu_gib - p.activations_gib - p.attention_gib
        per_row = (p.activations_gib + p.attention_gib) / batch_rows  # both scale with the rows of a batch
        rows_fit = int((p.usable_gib - fixed) // per_row)
        p.knob = f"max_tokens={rows_fit * length}" if rows_fit >= 1 else p.knob
    return p


def plan_generation(stage: str, model: str, hw: Hardware, *, questions: int, new_tokens: int, batch_size: int,
                    bits: int, model_dir: str, processes: int) -> StagePlan:
    """Decode-bound generation with a GPTQ model through transformers: every step reads the weights; the
    torch/dequantize kernels write and read a 16-bit copy of each layer too (3x the packed traffic at 3 bits
    is ~16/3 + 1 more bytes). ``processes`` data-parallel copies share the questions."""
    arch = build_on_meta(model, model_dir, "CAUSAL_LM", None)
    p = StagePlan(stage, model, total=arch["total"])
    packed = weight_bytes(arch, "gptq", bits)
    p.weights_gib = packed / GIB
    kv = 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * 2 * batch_size * 8192
    p.activations_gib = kv / GIB  # KV cache at max_model_len 8192
    step_bytes = packed + arch["linear_in_blocks"] * 2 * 2  # dequantized fp16 written + read each step
    step_s = step_bytes / (hw.hbm_tbs * 1e12 * 0.6)
    batches = math.ceil(questions / batch_size / processes)
    p.rows = questions
    p.tokens = questions * new_tokens
    p.hours = batches * new_tokens * step_s / 3600
    p.notes.append(f"{processes} process(es) x batch {batch_size}, {new_tokens} new tokens per answer, "
                   f"{step_s * 1e3:.0f} ms per decode step (dequantize-every-step kernel, 60% of HBM bandwidth)")
    if p.hours > WORKING_DAY_H:
        shards = math.ceil(p.hours / WORKING_DAY_H * processes)
        p.notes.append(f"over a working day ({p.hours:.0f} h): stage 20's hf backend runs one process; "
                       f"{shards}+ data-parallel copies ({p.weights_gib:.0f} GiB each) would bring it under "
                       f"{WORKING_DAY_H} h, or serve the {bits}-bit model with vLLM (backend=vllm_server, "
                       "docs/gpu.md), whose GPTQ kernels do not dequantize the whole layer each step")
    return _finish(p, hw, knob="logic_answer.batch_size (lower) or more GPUs")


def _finish(p: StagePlan, hw: Hardware, knob: str) -> StagePlan:
    p.usable_gib = hw.gib * HEADROOM
    p.per_gpu_gib = (p.weights_gib + p.states_gib + p.activations_gib + p.attention_gib + p.logits_gib
                     + CUDA_CONTEXT_GIB)
    p.fits = p.per_gpu_gib <= p.usable_gib
    if p.weights_gib + p.states_gib + CUDA_CONTEXT_GIB > p.usable_gib:
        knob = "the weights alone exceed this GPU: a larger GPU, fewer bits, or more GPUs (ZeRO-3 / device_map)"
    p.knob = "" if p.fits else knob
    return p


def plan_profile(profile: dict, hw: Hardware, stages: list[str]) -> list[StagePlan]:
    com = profile.get("common", {})
    model_dir = com.get("model_dir", "model_path")
    teachers, student = list(com.get("teachers", [])), com.get("student", "")
    prep = _sec(profile, "prepare")
    L = int(prep.get("max_length", 1024))
    fold_rows = int(DATA["lmsys_train"] * (1 - 1 / int(com.get("n_folds", 5)))
                    + (DATA["extra_33k"] if prep.get("use_33k", True) else 0))
    fold_rows *= 2 if prep.get("swap_augment", True) else 1
    zero = 2 if hw.n_gpus > 1 else 0  # run_pipeline.sh: configs/accelerate/zero2.yaml on several GPUs
    out: list[StagePlan] = []
    train_kw = dict(max_length=L, mean_tokens=L * DATA["fill"], model_dir=model_dir)
    dtype = dtype_for_capability(hw.capability)
    for stage in stages:
        if stage == "post_pretrain":
            s = _sec(profile, stage)
            for m in teachers + [student]:
                q = s.get("quant", "nf4") if m in teachers else s.get("student_quant", "")
                out.append(plan_training(stage, m, "SEQ_CLS", s, hw, rows=DATA["ut"], epochs=float(s.get("epochs", 1)),
                                         quant=q, zero=zero, **train_kw))
        elif stage == "teacher":
            s = _sec(profile, stage)
            # the seed's schedule trains epochs_run (1) of the planned epochs (2): half the teacher compute
            epochs_run = float(s.get("epochs_run", -1))
            epochs = min(epochs_run, float(s.get("epochs", 2))) if epochs_run > 0 else float(s.get("epochs", 2))
            for m in teachers:
                out.append(plan_training(stage, m, "SEQ_CLS", s, hw, rows=fold_rows, epochs=epochs,
                                         quant=s.get("quant", "nf4"), zero=zero, **train_kw))
        elif stage == "logits":
            s = _sec(profile, stage)
            for m in teachers:
                out.append(plan_scoring(stage, m, hw, rows=fold_rows, length=L, mean_tokens=L * DATA["fill"],
                                        batch_size=int(s.get("batch_size", 8)), max_tokens=int(s.get("max_tokens", 0)),
                                        quant=s.get("quant", ""), bits=4, dtype=dtype, model_dir=model_dir))
        elif stage == "distill":
            s = _sec(profile, stage)
            out.append(plan_training(stage, student, "SEQ_CLS", s, hw, rows=fold_rows,
                                     epochs=float(s.get("epochs", 2)), quant=s.get("quant", ""), zero=zero, **train_kw))
        elif stage == "predict":
            s, q = _sec(profile, stage), _sec(profile, "quantize")
            pd_dtype = dtype_for_capability(hw.capability, s.get("dtype", "auto"))
            length = int(s.get("max_length", 2000))
            out.append(plan_scoring(stage, student, hw, rows=DATA["test"], length=length,
                                    mean_tokens=length * DATA["fill"], batch_size=int(s.get("batch_size", 8)),
                                    max_tokens=int(s.get("max_tokens", 0)), quant="gptq", bits=int(q.get("bits", 8)),
                                    dtype=pd_dtype, model_dir=model_dir, passes=2 if s.get("tta", True) else 1))
        elif stage == "logic_sft":
            s = _sec(profile, stage)
            base = s.get("base_model", "llama31_70b_instruct")
            # DDP (run_reasoning.sh launches plain `accelerate launch`): no ZeRO partitioning
            kw = dict(rows=DATA["logic_sft_rows"], epochs=float(s.get("epochs", 10)),
                      max_length=int(s.get("cutoff_len", 10240)), mean_tokens=DATA["logic_sft_tokens"],
                      quant=s.get("quant", "nf4"), zero=0, model_dir=model_dir)
            sft = {**s, "lora_dropout": s.get("lora_dropout", 0.0)}
            p = plan_training(stage, base, "CAUSAL_LM", sft, hw, **kw)
            if p.notes and kw["quant"]:
                upcast = plan_training(stage, base, "CAUSAL_LM", sft, hw, fp32_head=True, **kw)
                p.notes.append(f"with peft's fp32 upcast of embeddings/lm_head (models.keep_frozen_in_compute_dtype "
                               f"undoes it) it would be {upcast.per_gpu_gib:.0f} GiB per GPU")
            out.append(p)
        elif stage == "logic_eval":
            s, q = _sec(profile, "logic_answer"), _sec(profile, "logic_quantize")
            bits = min(int(b) for b in q.get("bits", [4, 3]))
            base = _sec(profile, "logic_sft").get("base_model", "llama31_70b_instruct")
            out.append(plan_generation("logic_eval", base, hw, questions=DATA["logic_questions"],
                                       new_tokens=DATA["logic_new_tokens"], batch_size=int(s.get("batch_size", 16)),
                                       bits=bits, model_dir=model_dir, processes=1))
        else:
            raise C.ConfigError(f"plan: unknown stage {stage!r}")
    return out


# ------------------------------------------------------------------------------------------- report


def render(plans: list[StagePlan], hw: Hardware, profile_name: str) -> str:
    lines = [f"# Plan: {profile_name} on {hw.name} ({hw.n_gpus} GPU x {hw.gib} GiB usable, "
             f"{'sm%d%d' % hw.capability if hw.capability else 'CPU'} -> "
             f"{str(dtype_for_capability(hw.capability)).replace('torch.', '')}, "
             f"{hw.tflops:g} TFLOPS peak)", "",
             "| stage | model | params | trainable | weights | model states (DeepSpeed est.) | activations | "
             "attn scores | logits | per GPU / budget GiB | rows | steps | tokens | hours (MFU) | fits |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        ds = f" ({p.deepspeed_gib:.2f})" if p.deepspeed_gib is not None else ""
        lines.append(
            f"| {p.stage} | {p.model} | {p.total / 1e9:.2f}B | {p.trainable / 1e6:.1f}M | {p.weights_gib:.1f} | "
            f"{p.states_gib:.2f}{ds} | {p.activations_gib:.1f} | {p.attention_gib:.1f} | {p.logits_gib:.1f} | "
            f"{p.per_gpu_gib:.1f} / {p.usable_gib:.1f} | {p.rows:,} | {p.steps:,} | {p.tokens / 1e6:.0f}M | "
            f"{p.hours:.1f} ({f'{p.mfu:.2f}' if p.mfu else 'HBM-bound'}) | "
            f"{('yes' + (' (long)' if p.hours > 24 else '')) if p.fits else 'NO: ' + p.knob} |")
    lines += [""] + [f"- {p.stage} / {p.model}: {'; '.join(p.notes)}" for p in plans]
    lines += ["", "Assumptions: "
              + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in DATA.items())
              + f"; budget = {HEADROOM:.0%} of usable memory, {CUDA_CONTEXT_GIB} GiB CUDA context per GPU; "
              "hours per run of the stage (per fold, per model) from FLOPs at the stated MFU."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[StagePlan]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="profile YAML, e.g. configs/a100x8.yaml")
    ap.add_argument("--hardware", default="", help=f"one of {', '.join(HARDWARE)}; default: the profile's own")
    ap.add_argument("--stages", default="", help="comma-separated subset (default: the profile's stages)")
    ap.add_argument("--model-dir", default="", help="where non-shipped model configs are (default: common.model_dir)")
    ap.add_argument("--json", default="", help="also write the plan as JSON here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a stage does not fit")
    args = ap.parse_args(argv)
    path = Path(args.config)
    profile = C.read_profile(path)
    if args.model_dir:
        profile.setdefault("common", {})["model_dir"] = args.model_dir
    default_hw, default_stages = PROFILES.get(path.name, ("", LMSYS_TRAIN))
    hw_name = args.hardware or default_hw
    if hw_name not in HARDWARE:
        raise SystemExit(f"plan: --hardware must be one of {', '.join(HARDWARE)} (got {hw_name!r})")
    hw = HARDWARE[hw_name]
    stages = [s for s in args.stages.split(",") if s] or default_stages
    plans = plan_profile(profile, hw, stages)
    print(render(plans, hw, path.name))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(p) for p in plans], indent=1))
    if args.strict and not all(p.fits for p in plans):
        raise SystemExit(1)
    return plans


if __name__ == "__main__":
    main()
