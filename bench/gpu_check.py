"""The measured parts of bench/gpu_check.sh (one GPU): facts, the T4 question, full-size Gemma-2-9B speed.

    python bench/gpu_check.py facts                      # capability, dtype rule, kernels, versions -> JSON
    python bench/gpu_check.py gemma_layer --out r.json    # real-width 1-layer Gemma-2, GPTQ 8-bit, fp16 + bf16,
                                                          #   8 x 2,000 tokens under a 16 GB cap
    python bench/gpu_check.py gemma_full --out r.json     # random-weight Gemma-2-9B bf16 at 2,000 tokens
    python bench/gpu_check.py report --results DIR --md bench/results/gpu_check.md

Sizes are options so the same code runs on a CPU with a scaled-down model (``--hidden 64 ...``): that is how
tests/test_gpu_check.py checks it; the real sizes are the defaults. Random weights: speed and memory are real,
logits are not (whether fp16 overflows on the *trained* model is checked by the scoring guard at run time).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from arena_distill.dist import dtype_for_capability, device_capability, pick_device  # noqa: E402
from arena_distill.quant import gptq_kernels  # noqa: E402

# Dense bf16/fp16 tensor-core peak by device name (TFLOPS), for MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0, "T4": 65.0}
GIB = 1024 ** 3


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def forward_flops_per_token(n_params_no_embed: int, layers: int, heads: int, head_dim: int, length: int) -> float:
    """2 FLOPs per weight per token + attention (QK^T and AV over the whole row, not causal-halved: eager
    attention computes the full L x L scores)."""
    return 2.0 * n_params_no_embed + 4.0 * layers * heads * head_dim * length


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s * flops_per_token / (peak * 1e12)


def projected_hours(rows: int, rows_per_s: float, tta: bool = True) -> float:
    return rows * (2 if tta else 1) / rows_per_s / 3600


# ------------------------------------------------------------------------------------------------ facts


def facts() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.cuda.is_available()}
    for pkg in ("gptqmodel", "deepspeed", "bitsandbytes", "peft", "accelerate"):
        try:
            out[pkg] = __import__(pkg).__version__
        except Exception as exc:  # noqa: BLE001 - report, do not stop
            out[pkg] = f"unavailable ({type(exc).__name__})"
    cap = device_capability(pick_device())
    out["capability"] = list(cap) if cap else None
    out["dtype_rule"] = str(dtype_for_capability(cap)).replace("torch.", "")
    out["gptq_kernels"] = gptq_kernels(cap)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device=props.name, memory_gib=round(props.total_memory / GIB, 1),
                   torch_is_bf16_supported=torch.cuda.is_bf16_supported(),
                   torch_is_bf16_supported_no_emulation=torch.cuda.is_bf16_supported(including_emulation=False),
                   peak_tflops=peak_tflops(props.name))
    return out


# ------------------------------------------------------------------------------------------- models


def gemma2_config(args, layers: int):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(REPO / "configs" / "models" / "Gemma2_9b"), num_labels=3)
    cfg.num_hidden_layers = layers
    if args.hidden:  # scaled-down twin for CPU tests
        cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = args.hidden, 4 * args.hidden, args.hidden // 4
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.query_pre_attn_scalar = 4, 2, args.hidden // 4
        cfg.vocab_size = 1000
    cfg.pad_token_id = 0
    cfg.layer_types = cfg.layer_types[:layers] if getattr(cfg, "layer_types", None) else None
    return cfg


def _rows(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=length).tolist() for _ in range(n)]


class _Tok:
    """The minimal tokenizer surface quantize_classifier needs for id-list calibration rows."""

    pad_token_id = 0

    def save_pretrained(self, path: str) -> None:
        pass


def gemma_layer(args) -> dict:
    """Real-width 1-layer Gemma-2 -> GPTQ 8-bit -> score 8 x 2,000 tokens in fp16 and bf16 under a memory cap."""
    import tempfile

    from transformers import AutoModelForSequenceClassification

    from arena_distill.quant import kernel_in_use, load_gptq, quantize_classifier
    from arena_distill.scoring import score_classifier

    device = pick_device()
    cfg = gemma2_config(args, layers=1)
    work = Path(args.work or tempfile.mkdtemp(prefix="gemma_layer_"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(work / "fp")
    del model
    calib = _rows(args.calib_rows, min(args.length, 256), cfg.vocab_size, seed=1)
    q = quantize_classifier(work / "fp", work / "q8", calib, _Tok(), bits=8, group_size=128,
                            max_length=256, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    rows = _rows(args.rows, args.length, cfg.vocab_size, seed=2)
    out = {"config": {"hidden": cfg.hidden_size, "head_dim": cfg.head_dim, "mlp": cfg.intermediate_size,
                      "layers": 1, "vocab": cfg.vocab_size, "rows": args.rows, "length": args.length},
           "quantize_seconds": q["quantize_seconds"], "cap_gib": args.cap_gib, "runs": []}
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total), device)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        run = {"dtype": name}
        try:
            m = load_gptq(work / "q8", dtype=dtype, device=device, num_labels=3, attn_implementation="eager")
            run["kernel"] = kernel_in_use(m)
            weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            _, logits, stats = score_classifier(m, rows, 0, batch_size=args.rows, max_tokens=args.rows * args.length,
                                                device=device, progress=False)
            run.update(ok=True, finite=bool(np.isfinite(logits).all()), rescored_batches=stats["rescored_batches"],
                       seconds=stats["seconds"], rows_per_s=stats["rows_per_s"])
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                # the other 41 layers at 8 bits (+ scales) on top: what the whole 9B needs on one GPU
                per_layer = sum(b.numel() * b.element_size() for n, b in m.named_buffers()
                                if "layers.0." in n) + sum(p.numel() * p.element_size()
                                                           for n, p in m.named_parameters() if "layers.0." in n)
                run.update(weights_gib=round(weights / GIB, 2), peak_gib=round(peak / GIB, 2),
                           full_model_peak_gib=round((peak + 41 * per_layer) / GIB, 2))
            del m
        except Exception as exc:  # noqa: BLE001 - an OOM under the cap is a result, not a crash
            run.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        out["runs"].append(run)
    return out


def gemma_full(args) -> dict:
    """Random-weight Gemma-2-9B (bf16, eager attention) scoring rows of 2,000 tokens: rows/s, MFU, projection."""
    from transformers import AutoModelForSequenceClassification

    from arena_distill.scoring import score_classifier

    device = pick_device()
    dtype = dtype_for_capability(device_capability(device)) if device.type == "cuda" else torch.float32
    cfg = gemma2_config(args, layers=args.layers or 42)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(cfg, dtype=dtype, attn_implementation="eager")
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_no_embed = n_params - cfg.vocab_size * cfg.hidden_size
    warm = _rows(args.batch, args.length, cfg.vocab_size, seed=3)
    score_classifier(model, warm, 0, batch_size=args.batch, device=device, progress=False)  # warm-up
    rows = _rows(args.rows, args.length, cfg.vocab_size, seed=4)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    _, logits, stats = score_classifier(model, rows, 0, batch_size=args.batch, device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rows_per_s = args.rows / stats["seconds"]
    name = torch.cuda.get_device_properties(device).name if device.type == "cuda" else platform.processor() or "cpu"
    fpt = forward_flops_per_token(n_no_embed, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim,
                                  args.length)
    return {"device": name, "dtype": str(dtype).replace("torch.", ""), "params": n_params,
            "build_seconds": round(build_s, 1),
            "rows": args.rows, "batch": args.batch, "length": args.length, "seconds": stats["seconds"],
            "rows_per_s": round(rows_per_s, 3), "tokens_per_s": round(rows_per_s * args.length),
            "mfu": mfu(rows_per_s * args.length, fpt, peak_tflops(name)), "finite": bool(np.isfinite(logits).all()),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2) if device.type == "cuda" else None,
            "projected_hours_25k_tta_at_full_length": round(projected_hours(25_000, rows_per_s), 2)}


# ------------------------------------------------------------------------------------------- report


def report(results: Path, md: Path) -> str:
    def load(name: str) -> dict | None:
        f = results / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    facts_, layer, full, steps = load("facts"), load("gemma_layer"), load("gemma_full"), load("steps")
    lines = ["# GPU check (bench/gpu_check.sh)", ""]
    if facts_:
        lines += ["## Facts", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in facts_.items()] + [""]
    if steps:
        lines += ["## Steps", "", "| step | exit code | seconds |", "|---|---|---|"]
        lines += [f"| {s['name']} | {s['rc']} | {s['seconds']} |" for s in steps] + [""]
    if layer:
        c = layer["config"]
        lines += [f"## Real-width 1-layer Gemma-2, GPTQ 8-bit, {c['rows']} x {c['length']} tokens, "
                  f"cap {layer['cap_gib']} GiB", "",
                  "| dtype | ok | kernel | finite | re-scored batches | s | peak GiB | whole 9B projected GiB | error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in layer["runs"]:
            lines.append(f"| {r['dtype']} | {r['ok']} | {r.get('kernel', '')} | {r.get('finite', '')} | "
                         f"{r.get('rescored_batches', '')} | {r.get('seconds', '')} | {r.get('peak_gib', '')} | "
                         f"{r.get('full_model_peak_gib', '')} | {r.get('error', '')} |")
        lines.append("")
    if full:
        lines += ["## Random-weight Gemma-2-9B prediction", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in full.items()] + [""]
    text = "\n".join(lines)
    md.parent.mkdir(parents=True, exist_ok=True)
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(md)
    return text


def main(argv: list[str] | None = None) -> dict | str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["facts", "gemma_layer", "gemma_full", "report"])
    ap.add_argument("--out", default="", help="JSON result file")
    ap.add_argument("--results", default="", help="report: folder of the JSON results")
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "gpu_check.md"))
    ap.add_argument("--work", default="", help="gemma_layer: scratch folder (default: a temp dir)")
    ap.add_argument("--hidden", type=int, default=0, help="0 = real Gemma-2-9B widths; e.g. 64 for a CPU test")
    ap.add_argument("--layers", type=int, default=0, help="gemma_full: layers (0 = 42, the real model)")
    ap.add_argument("--rows", type=int, default=8, help="rows scored (gemma_layer: one batch; gemma_full: timed)")
    ap.add_argument("--batch", type=int, default=8, help="gemma_full: rows per batch")
    ap.add_argument("--length", type=int, default=2000, help="tokens per row (the seed's inference length)")
    ap.add_argument("--calib-rows", type=int, default=16, help="gemma_layer: GPTQ calibration rows")
    ap.add_argument("--cap-gib", type=float, default=16.0, help="gemma_layer: per-process memory cap (T4 ~ 16 GB)")
    args = ap.parse_args(argv)
    if args.what == "report":
        return report(Path(args.results), Path(args.md))
    result = {"facts": facts, "gemma_layer": gemma_layer, "gemma_full": gemma_full}[args.what](
        *(() if args.what == "facts" else (args,)))
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return result


if __name__ == "__main__":
    main()
