"""Stage 23: merge the logic SFT LoRA into its full-precision base -> a plain checkpoint folder.

Reads   model_save/logic_sft/   adapter + config.yaml (its base_model names the base folder; stage 22)
Writes  model_save/logic_merged/   config.json, model safetensors, tokenizer, merge_report.json, config.yaml,
        DONE.json (the folder is built under a temporary name and renamed when complete)

Chat template: an adapter trained with template=llama3_factory (stage 22's default, the seed's) gets
LLaMA-Factory's llama3 template written into the merged tokenizer, as LLaMA-Factory's export does; the
quantized models of stage 24 inherit it, so evaluation answers in the format the model was trained in.

A quantized base is refused (merging into 4-bit weights is lossy; merge into the fp base, then quantize the
merged model in stage 24), as LLaMA-Factory refuses it. The merge is checked: the merged model's logits on a
probe prompt must equal the base + adapter logits within `atol` (skipped when verify=false, e.g. for a 70B
where it costs a second forward pass of both models).

Launch (repo root):
    python src/23_logic_merge.py --config configs/tiny.yaml
    python src/23_logic_merge.py --config configs/a100x8.yaml     # CPU RAM ~150 GB for a 70B in bf16

Idempotent: a finished merge (DONE.json) is skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from arena_distill import config as C
from arena_distill import llama_factory
from arena_distill.dist import print0
from arena_distill.io import atomic_dir, atomic_write_json, check_done, fingerprint, mark_done, require_done, run_stage
from arena_distill.models import check_not_quantized, load_causal_lm, load_peft, load_tokenizer


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class MergeConfig:
    save_dir: str = C.field("model_save", help="where adapters and merged models go")
    adapter_name: str = C.field("logic_sft", help="stage-22 adapter folder under save_dir")
    out_name: str = C.field("logic_merged", help="merged checkpoint folder under save_dir")
    dtype: str = C.field("auto", help="dtype of the merged weights: auto (bf16 on GPU, fp32 on CPU), bf16, fp32")
    device: str = C.field("cpu", help="where to merge (cpu needs RAM for the whole model; cuda for speed)")
    verify: bool = C.field(True, help="check merged logits == base + adapter logits on a probe prompt")
    atol: float = C.field(1e-5, help="verify tolerance (fp32 on CPU; a bf16 merge differs by rounding: use ~5e-2)")
    max_shard_size: str = C.field("5GB", help="safetensors shard size")
    force: bool = C.field(False, help="re-merge even if DONE.json exists")


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(MergeConfig, "logic_merge", argv)
    adapter = Path(cfg.save_dir) / cfg.adapter_name
    out = Path(cfg.save_dir) / cfg.out_name
    fp = fingerprint(cfg, exclude=("verify", "atol"))  # the check's tolerance does not change the merge
    if check_done(out, fp, cfg.force, "logic_merge"):
        return {"skipped": True, "out": str(out)}

    # -------------------------------------------------------------------------------------------- base
    require_done(adapter, "python src/22_logic_sft.py", what="logic SFT adapter")
    saved = C.read_saved_config(adapter / "config.yaml")
    base = Path(saved["base_model"])
    template = saved.get("config", {}).get("template", "model")
    check_not_quantized(base)
    dtype = torch.float32 if cfg.dtype == "auto" and cfg.device == "cpu" else cfg.dtype
    print0(f"[logic_merge] base {base} + adapter {adapter} -> {out} (dtype {dtype}, device {cfg.device})")
    tokenizer = load_tokenizer(base)
    model = load_peft(load_causal_lm(base, dtype=dtype, device_map=cfg.device), adapter)
    model.eval()

    # ----------------------------------------------------------------------------------- merge + verify
    probe = tokenizer("因此答案是：A. 逻辑推理 probe text", return_tensors="pt")["input_ids"].to(model.device)
    ref = None
    if cfg.verify:
        with torch.no_grad():
            ref = model(input_ids=probe).logits.float()
    merged = model.merge_and_unload()
    report = {"base_model": str(base), "adapter": str(adapter), "dtype": str(merged.dtype),
              "chat_template": "llama3_factory (LLaMA-Factory llama3)" if template == llama_factory.NAME else
              "the base model's"}
    if ref is not None:
        with torch.no_grad():
            diff = (merged(input_ids=probe).logits.float() - ref).abs().max().item()
        report["max_abs_logit_diff"] = diff
        print0(f"[logic_merge] merged vs base+adapter: max |logit diff| = {diff:.2e} (atol {cfg.atol})")
        if diff > cfg.atol:
            raise RuntimeError(f"merge check failed: max |logit diff| {diff:.3e} > atol {cfg.atol}")

    # ------------------------------------------------------------------------------------------- save
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, max_shard_size=cfg.max_shard_size)
        tokenizer.padding_side = "left"  # generation-ready
        if template == llama_factory.NAME:
            # as LLaMA-Factory's export: the training template becomes the model's chat template, so every chat
            # API (transformers, vLLM offline, vllm serve) answers in the format the adapter was trained in
            tokenizer.chat_template = llama_factory.JINJA
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "merge_report.json", report)
        C.save_config(cfg, tmp, base_model=str(base), adapter=str(adapter))
        mark_done(tmp, fingerprint=fp, stage="logic_merge", **{k: v for k, v in report.items() if k == "max_abs_logit_diff"})
    print0(f"[logic_merge] done -> {out}")
    return report


if __name__ == "__main__":
    run_stage(main)
