"""Stage 24: GPTQ 4-bit and 3-bit quantization of the merged logic model, with the seed's calibration recipe.

Reads   model_save/logic_merged/   (stage 23)
        data/tianchi_logic/round1_{train,test}_data.jsonl   (calibration prompts)
Writes  model_save/logic_gptq_<bits>bit/   for each of `bits`: GPTQ checkpoint + tokenizer, quant_report.json,
        config.yaml, DONE.json

Calibration (the seed's LLaMA-Factory export, `export_quantization_maxlen: 256`, `nsamples: 1024`): the
seed_v1 prompt of every question of train + test, tokenized as raw text; keep those longer than `window`
tokens; draw `n_samples` of them (with replacement, seeded) and cut a random `window`-token slice from each
(start uniform in [0, len - window - 1], as LLaMA-Factory does).

Serving note: vLLM's GPTQ kernels serve 4- and 8-bit checkpoints only; the 3-bit model is evaluated through
GPTQModel kernels inside transformers (stage 20 with backend=auto or hf picks that route).

Launch (repo root):
    python src/24_logic_quantize.py --config configs/tiny.yaml               # CPU, seconds
    python src/24_logic_quantize.py --config configs/a100x8.yaml             # 1 GPU: a 70B layer by layer
    python src/24_logic_quantize.py --config configs/a100x8.yaml bits=[3]    # one width only

Idempotent per width: a folder with DONE.json is skipped unless force=true.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from arena_distill import config as C
from arena_distill.dist import print0
from arena_distill.io import atomic_write_json, check_done, fingerprint, mark_done, require_done, run_stage, StageInputError
from arena_distill.logic_text import TEMPLATES, iter_questions, prompt_for, read_logic_data
from arena_distill.models import load_tokenizer
from arena_distill.quant import quantize_causal_lm


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class QuantizeConfig:
    save_dir: str = C.field("model_save", help="where merged and quantized models go")
    merged_name: str = C.field("logic_merged", help="stage-23 folder under save_dir")
    out_prefix: str = C.field("logic_gptq", help="outputs: <save_dir>/<out_prefix>_<bits>bit")
    bits: list[int] = C.field([4, 3], help="GPTQ widths to produce (vLLM serves 4 and 8 only)")
    group_size: int = C.field(128, help="GPTQ group size (LLaMA-Factory / GPTQConfig default 128)")
    # The seed's settings: LLaMA-Factory's export built transformers' GPTQConfig(bits, dataset) (group 128, damp
    # 0.1, desc_act/static_groups off, sym, true_sequential), run by optimum with auto-gptq 0.7.1's GPTQ class.
    # GPTQModel 7.6 differs in two defaults that change the weights: damp_percent 0.05 and act_group_aware=True
    # (group-aware column reordering, gptqmodel/quantization/gptq.py; auto-gptq had none). See docs/reasoning.md.
    desc_act: bool = C.field(False, help="activation-order quantization (the seed: off)")
    damp_percent: float = C.field(0.1, help="Hessian dampening (the seed's GPTQConfig: 0.1; GPTQModel's default "
                                            "0.05, auto-gptq BaseQuantizeConfig's 0.01)")
    act_group_aware: bool = C.field(False, help="GPTQModel's group-aware reordering (its default: on); false = "
                                                "natural column order, as auto-gptq 0.7.1 (the seed)")
    sym: bool = C.field(True, help="symmetric quantization (the seed and both libraries: true)")
    true_sequential: bool = C.field(True, help="quantize a block's sub-layers in order, each on the outputs of "
                                               "the already quantized ones (the seed and both libraries: true)")
    static_groups: bool = C.field(False, help="group scales fixed before the column loop (only with desc_act; "
                                              "the seed and both libraries: false)")
    calib_files: list[str] = C.field(["data/tianchi_logic/round1_train_data.jsonl",
                                      "data/tianchi_logic/round1_test_data.jsonl"],
                                     help="problem files whose prompts make the calibration set (the seed's "
                                          "build_quant_val_data.py read the original train file, not the corrected "
                                          "one: calibration uses prompts only, no labels)")
    template: str = C.field("seed_v1", help="prompt template version for the calibration prompts")
    window: int = C.field(256, help="tokens per calibration sample; prompts not longer than this are skipped")
    n_samples: int = C.field(1024, help="calibration samples")
    batch_size: int = C.field(1, help="GPTQModel calibration batch size")
    seed: int = C.field(2025, help="seed of the sample / window draws")
    force: bool = C.field(False, help="re-quantize even if DONE.json exists")

    def __post_init__(self) -> None:
        if not self.bits or any(b not in (2, 3, 4, 8) for b in self.bits):
            raise C.ConfigError(f"bits must be a non-empty list of 2, 3, 4, 8; got {self.bits}")
        if self.template not in TEMPLATES:
            raise C.ConfigError(f"unknown template {self.template!r}")


def calibration_windows(prompt_ids: list[list[int]], window: int, n_samples: int, seed: int) -> list[list[int]]:
    """``n_samples`` random ``window``-token slices of randomly drawn prompts longer than ``window``."""
    long = [ids for ids in prompt_ids if len(ids) > window]
    if not long:
        raise StageInputError(f"no calibration prompt is longer than window={window} tokens")
    rng = random.Random(seed)
    out = []
    for _ in range(n_samples):
        ids = long[rng.randrange(len(long))]
        start = rng.randint(0, len(ids) - window - 1)
        out.append(ids[start:start + window])
    return out


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(QuantizeConfig, "logic_quantize", argv)
    merged = Path(cfg.save_dir) / cfg.merged_name
    outs = {b: Path(cfg.save_dir) / f"{cfg.out_prefix}_{b}bit" for b in cfg.bits}
    # One folder per width, so each folder's fingerprint names its own width, not the whole list.
    fp = fingerprint(cfg, exclude=("bits", "out_prefix", "batch_size"))
    todo = [b for b in cfg.bits if not check_done(outs[b], {**fp, "bits": b}, cfg.force, "logic_quantize")]
    if not todo:
        print0(f"[logic_quantize] {', '.join(map(str, outs.values()))} done; skipping (force=true to redo)")
        return {"skipped": True}
    require_done(merged, "python src/23_logic_merge.py", what="merged logic model")

    # ------------------------------------------------------------------------------------- calibration
    tokenizer = load_tokenizer(merged)
    prompts = []
    for f in cfg.calib_files:
        if not Path(f).is_file():
            raise StageInputError(f"missing calibration file {f} (copy it from ../shared/data/tianchi_logic/)")
        prompts += [prompt_for(p, q, cfg.template) for p, _, q in iter_questions(read_logic_data(f).problems)]
    prompt_ids = [tokenizer(t)["input_ids"] for t in prompts]
    windows = calibration_windows(prompt_ids, cfg.window, cfg.n_samples, cfg.seed)
    n_long = sum(len(x) > cfg.window for x in prompt_ids)
    print0(f"[logic_quantize] calibration: {len(prompts)} prompts, {n_long} longer than {cfg.window} tokens -> "
           f"{len(windows)} windows of {cfg.window} tokens (seed {cfg.seed})")

    # -------------------------------------------------------------------------------------------- GPTQ
    reports = {}
    for bits in todo:
        out = outs[bits]
        report = quantize_causal_lm(merged, out, windows, bits=bits, group_size=cfg.group_size,
                                    tokenizer=tokenizer, max_length=cfg.window, desc_act=cfg.desc_act,
                                    sym=cfg.sym, damp_percent=cfg.damp_percent, batch_size=cfg.batch_size,
                                    qcfg_extra={"act_group_aware": cfg.act_group_aware,
                                                "true_sequential": cfg.true_sequential,
                                                "static_groups": cfg.static_groups})
        report.update(n_prompts=len(prompts), n_prompts_longer_than_window=n_long, window=cfg.window,
                      merged=str(merged), vllm_servable=bits in (4, 8))
        atomic_write_json(out / "quant_report.json", report)
        C.save_config(cfg, out, merged=str(merged), bits_of_this_folder=bits)
        mark_done(out, fingerprint={**fp, "bits": bits}, stage="logic_quantize", bits=bits, seconds=report.get("quantize_seconds"))
        reports[bits] = report
        print0(f"[logic_quantize] {bits}-bit done in {report.get('quantize_seconds')}s -> {out}")
    return reports


if __name__ == "__main__":
    run_stage(main)
