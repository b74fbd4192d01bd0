"""Stage 22: (Q)LoRA supervised fine-tuning of a causal LM on the self-reflection traces.

Reads   data/logic/reflect/sft.json   alpaca rows {"instruction", "input", "output"} (stage 21)
        model_path/<base_model>/      the base checkpoint (the seed: Llama-3.1-70B-Instruct itself)
Writes  model_save/logic_sft/  adapter_model.safetensors + adapter_config.json (last step), log.jsonl (one
        row per optimizer step; eval rows carry "eval_loss"), metrics.json, config.yaml (base_model = the
        base folder, read back by stage 23), checkpoint/ (resume state), DONE.json

Recipe (the seed's LLaMA-Factory settings, now in configs/*.yaml [logic_sft]): LLaMA-Factory's `llama3`
template (`template=llama3_factory`: no system turn, texts kept as they are; `template=model` = the tokenizer's
own chat template; user = instruction [+ "\\n" + input], assistant = output; stage 23 writes the template
into the merged model's tokenizer, so evaluation answers in it), loss on the response tokens only
(labels -100 on the prompt), LoRA r16 / alpha32 on all linear layers, lr 5e-5, cosine with warmup ratio 0.1,
10 epochs, cutoff 10,240 tokens, 4-bit nf4 base (QLoRA) on GPU, 1% validation split with eval loss every
`eval_steps` optimizer steps. Length-grouped micro-batches, gradient accumulation to `global_batch`.
Loss normalisation `loss_norm=sequence` (default: each row's token-mean, rows weigh the same, as the seed's
LLaMA-Factory run on transformers 4.43) or `token` (every response token of the optimizer step weighs the
same, as LLaMA-Factory/TRL/HF Trainer since late 2024); see arena_distill.losses.sft_loss.

Launch (repo root):
    python src/22_logic_sft.py --config configs/tiny.yaml                                   # CPU / 1 GPU
    accelerate launch --num_processes 8 src/22_logic_sft.py --config configs/a100x8.yaml     # 8 GPUs (DDP,
        # each process holds the nf4 70B base, ~40 GB; global_batch 8 = the seed's 1 x 8 GPUs)

Training runs through arena_distill.engine (as stages 3, 4, 7): longest micro-batch first, fp32 LoRA weights,
non-reentrant gradient checkpointing, `report_to` trackers, elapsed/ETA on every step line.
Resume: a complete checkpoint (LoRA weights, optimizer, scheduler, RNG, loop position) is written every
`save_steps` optimizer steps; re-running the same command after a kill -9 continues from it with the same loss
curve and adapter bytes (granularity: one optimizer step; the batch order depends only on seed and epoch). A finished run (DONE.json) is skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from arena_distill import config as C
from arena_distill import engine, llama_factory
from arena_distill.batching import collate
from arena_distill.dist import is_main, print0, rank, world_size
from arena_distill.losses import sft_loss
from arena_distill.io import (atomic_write_json, check_done, fingerprint, mark_done, require_done, run_stage,
                              StageInputError)
from arena_distill.models import add_lora, describe, load_causal_lm, load_tokenizer, model_folder, warn_if_cpu_quant
from arena_distill.train_utils import LoraArgs, TrainArgs, promote_files
from arena_distill.readers import read_json

IGNORE = -100


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class SFTConfig(LoraArgs, TrainArgs):
    base_model: str = C.field("", help="base checkpoint: a folder name under model_dir")
    model_dir: str = C.field("model_path", help="base checkpoints")
    save_dir: str = C.field("model_save", help="where adapters and merged models go")
    logic_dir: str = C.field("data/logic", help="generation runs (stage 20/21 outputs)")
    reflect_name: str = C.field("reflect", help="stage-21 folder under logic_dir holding sft.json")
    out_name: str = C.field("logic_sft", help="adapter folder under save_dir")
    template: str = C.field("llama3_factory", help="llama3_factory = LLaMA-Factory's llama3 template, as the seed "
                                                   "(arena_distill/llama_factory.py); model = the tokenizer's own "
                                                   "chat template; raw = prompt + output + eos")
    cutoff_len: int = C.field(10240, help="max tokens per row (prompt + response); longer responses are cut")
    val_size: float = C.field(0.01, help="fraction of rows held out for eval loss (at least 1 row when > 0)")
    seed: int = C.field(2025, help="base seed (each rank uses seed + rank); also the split and batch order")
    lora_r: int = C.field(16, help="LoRA rank (the seed: 16)")
    lora_alpha: int = C.field(32, help="LoRA alpha (the seed: 32)")
    lora_dropout: float = C.field(0.0, help="LoRA dropout (LLaMA-Factory's default 0)")
    lr: float = C.field(5e-5, help="peak learning rate")
    epochs: float = C.field(10.0, help="epochs over the training rows")
    global_batch: int = C.field(8, help="rows per optimizer step over all processes")
    micro_batch: int = C.field(1, help="rows per forward pass per process")
    betas: list[float] = C.field([0.9, 0.999], help="AdamW betas (transformers' defaults, as LLaMA-Factory)")
    warmup_ratio: float = C.field(0.1, help="linear warmup over this fraction of the optimizer steps")
    loss_norm: str = C.field("sequence", help="sequence = each row's token-mean, rows weigh the same (the seed's "
                                              "run: LLaMA-Factory, transformers 4.43, 1 row per GPU); token = every "
                                              "response token of the optimizer step weighs the same (LLaMA-Factory/"
                                              "TRL/HF Trainer since late 2024)")
    eval_steps: int = C.field(10, help="eval loss on the validation rows every N optimizer steps (and at the end)")
    save_steps: int = C.field(20, help="write a resume checkpoint every N optimizer steps")
    cpu_threads: int = C.field(0, help="torch threads on CPU (0 = torch's default; 1 avoids oversubscribing a "
                                       "shared 2-core box)")
    force: bool = C.field(False, help="retrain even if DONE.json exists")

    def __post_init__(self) -> None:
        if not self.base_model:
            raise C.ConfigError("base_model= is required (a folder name under model_dir)")
        if self.quant not in ("", "nf4"):
            raise C.ConfigError(f"quant must be '' or nf4, got {self.quant!r}")
        if self.template not in ("llama3_factory", "model", "raw"):
            raise C.ConfigError(f"template must be llama3_factory, model or raw, got {self.template!r}")
        if self.loss_norm not in ("sequence", "token"):
            raise C.ConfigError(f"loss_norm must be sequence or token, got {self.loss_norm!r}")
        if not 0 <= self.val_size < 0.5:
            raise C.ConfigError("val_size must be in [0, 0.5)")
        super().__post_init__()


# ------------------------------------------------------------------------------------------------- data
def encode_example(tok, instruction: str, inp: str, output: str, cutoff_len: int,
                   template: str = "model") -> tuple[list[int], list[int]] | None:
    """``(input_ids, labels)`` with labels = -100 on every prompt token; None when the prompt alone does not
    fit ``cutoff_len`` (the row is dropped; an over-long response is cut at the end instead)."""
    user = instruction if not inp else f"{instruction}\n{inp}"
    if template == "llama3_factory":
        prompt_ids, response_ids = llama_factory.encode_oneturn(tok, user, output)
    elif template == "model":
        prompt_text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                              add_generation_prompt=True)
        full_text = tok.apply_chat_template([{"role": "user", "content": user},
                                             {"role": "assistant", "content": output}], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently with and without the assistant "
                             "turn; response-only masking needs it to be a prefix (use template=llama3_factory or raw)")
        prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        response_ids = tok(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tok(user)["input_ids"]
        response_ids = tok(output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if len(prompt_ids) >= cutoff_len:
        return None
    response_ids = response_ids[:cutoff_len - len(prompt_ids)]
    return prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(SFTConfig, "logic_sft", argv)
    out = Path(cfg.save_dir) / cfg.out_name
    fp = fingerprint(cfg)
    if check_done(out, fp, cfg.force, "logic_sft"):
        return {"skipped": True, "out": str(out)}
    if cfg.force and is_main() and out.exists():
        shutil.rmtree(out)

    # -------------------------------------------------------------------------------------------- init
    reflect = Path(cfg.logic_dir) / cfg.reflect_name
    require_done(reflect, "python src/21_logic_reflect.py", what="self-reflection SFT data")
    base = model_folder(cfg.model_dir, cfg.base_model, run_first="python src/01_build_tiny_models.py")
    if cfg.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    accelerator, accum, seed = engine.setup(cfg, out, tag="logic_sft")
    print0(f"[logic_sft] base={base}")

    # -------------------------------------------------------------------------------------------- data
    rows = read_json(reflect / "sft.json", fix="re-run src/21_logic_reflect.py, which writes it")
    tokenizer = load_tokenizer(base)
    if cfg.template == "llama3_factory":
        try:
            llama_factory.check_tokenizer(tokenizer)
        except ValueError as exc:
            raise StageInputError(f"{base}: {exc}") from None
    encoded, dropped = [], 0
    for r in rows:
        ex = encode_example(tokenizer, r["instruction"], r.get("input", ""), r["output"], cfg.cutoff_len,
                            cfg.template)
        if ex is None:
            dropped += 1
        else:
            encoded.append(ex)
    if dropped:
        print0(f"[logic_sft] dropped {dropped} rows whose prompt alone exceeds cutoff_len={cfg.cutoff_len}")
    perm = np.random.default_rng(cfg.seed).permutation(len(encoded))
    n_val = max(1, round(len(encoded) * cfg.val_size)) if cfg.val_size > 0 and len(encoded) >= 2 else 0
    val = [encoded[i] for i in perm[:n_val]]
    train = [encoded[i] for i in perm[n_val:]]
    plan = engine.plan_steps(len(train), cfg, accum, where=f"{reflect}/sft.json (training rows)", round_up=True)
    total_steps = plan.total_steps
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    n_resp = sum(sum(l != IGNORE for l in lab) for _, lab in train)
    print0(f"[logic_sft] rows {len(rows)} -> train {len(train)} / valid {len(val)}; response tokens {n_resp:,}; "
           f"steps/epoch {plan.steps_per_epoch}, total {total_steps}, warmup {warmup}")

    # ------------------------------------------------------------------------------------------- model
    model = load_causal_lm(base, dtype=cfg.dtype, quant=warn_if_cpu_quant(cfg.quant),
                           attn_implementation=cfg.attn_implementation or None)
    model.config.use_cache = False
    model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                     target_modules=cfg.target_modules, task="CAUSAL_LM",
                     gradient_checkpointing=cfg.gradient_checkpointing)
    print0(f"[logic_sft] {describe(model)}")
    model, optimizer, scheduler = engine.prepare(accelerator, model, cfg, plan, warmup_steps=warmup)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, out, seed=seed, base_model=str(base), n_train=len(train), n_valid=len(val))
    pad_id = tokenizer.pad_token_id
    device = accelerator.device

    def batch(examples: list[tuple[list[int], list[int]]]):
        ids, mask = collate([e[0] for e in examples], pad_id)
        labels, _ = collate([e[1] for e in examples], IGNORE)
        return ids.to(device), mask.to(device), labels.to(device)

    def evaluate(step: int) -> engine.Evaluation:
        """Token-mean CE on the response tokens of the validation rows (all ranks)."""
        model.eval()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        n_tok = torch.zeros((), device=device, dtype=torch.float64)
        with torch.no_grad():
            for ex in val[rank()::world_size()]:
                ids, mask, labels = batch([ex])
                n = (labels[:, 1:] != IGNORE).sum()
                loss_sum += model(input_ids=ids, attention_mask=mask, labels=labels).loss.double() * n
                n_tok += n
        loss = (accelerator.reduce(loss_sum, "sum") / accelerator.reduce(n_tok, "sum").clamp(min=1)).item()
        return engine.Evaluation({"eval_loss": loss})

    # Labelled tokens per row (after the one-token shift), to normalise over a whole optimizer step.
    n_targets = [sum(t != IGNORE for t in lab[1:]) for _, lab in train]
    step = {"targets": 0}

    def begin_step(group: list[np.ndarray]) -> None:
        step["targets"] = sum(n_targets[i] for micro in group for i in micro)

    def loss_fn(micro: np.ndarray):
        ids, mask, labels = batch([train[i] for i in micro])
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = sft_loss(logits, labels, cfg.loss_norm, step_targets=step["targets"], scale=plan.accum * plan.world,
                        ignore_index=IGNORE)
        # "ce" is logged as the step's CE under the chosen normalisation (the engine averages loss / accum).
        return loss, {"ce": loss.detach()}, int(mask.sum())

    # -------------------------------------------------------------------------------------------- loop
    result = engine.train(accelerator, model, optimizer, scheduler, plan, lengths=[len(e[0]) for e in train],
                          loss_fn=loss_fn, part_names=["ce"], seed=cfg.seed, out=out, tag="logic_sft", cfg=cfg,
                          evaluate=evaluate if val else None, eval_every=cfg.eval_steps,
                          save_every=cfg.save_steps, tracker_config=dataclasses.asdict(cfg),
                          begin_step=begin_step if cfg.loss_norm == "token" else None)
    if result.stopped:
        return {"stopped": True, "step": result.step, "out": str(out)}

    # ------------------------------------------------------------------------------------ save/summary
    summary: dict = {}
    if is_main():
        promote_files(out / "last", out, remove=True)  # the last step's adapter is the stage's result
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
        train_losses = [r["loss"] for r in log]
        evals = [(r["step"], r["eval_loss"]) for r in log if "eval_loss" in r]
        summary = {"base_model": str(base), "n_rows": len(rows), "n_train": len(train), "n_valid": len(val),
                   "n_dropped_cutoff": dropped, "total_steps": total_steps, "epochs": cfg.epochs,
                   "train_loss_first": train_losses[0], "train_loss_last": train_losses[-1],
                   "train_loss_min": min(train_losses),
                   "eval_loss_first": evals[0][1] if evals else None, "eval_loss_last": evals[-1][1] if evals else None,
                   "eval_curve": evals, "train_seconds_this_run": round(result.seconds, 1)}
        atomic_write_json(out / "metrics.json", summary)
        mark_done(out, fingerprint=fp, stage="logic_sft", total_steps=total_steps, eval_loss=summary["eval_loss_last"])
        print0(f"[logic_sft] done: train loss {summary['train_loss_first']:.4f} -> {summary['train_loss_last']:.4f}"
               f", eval loss {summary['eval_loss_first']} -> {summary['eval_loss_last']} -> {out}")
    accelerator.wait_for_everyone()
    return summary


if __name__ == "__main__":
    run_stage(main)
