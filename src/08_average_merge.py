"""Stage 8: average the student's fold adapters and merge them into the base model (config section ``average``).

Reads   model_save/<student>fold<k>/ for every fold (stage 7: PEFT adapter with LoRA on all linear layers and
        the score head in modules_to_save, config.yaml naming the base model, DONE.json)
        data/processed_data/<student>fold<k>/dev.parquet (held-out rows for the check; optional)
Writes  model_save/<student>_avg/        the averaged adapter (PEFT folder: predict_test.py model_source=adapter)
        model_save/final_merged/         full checkpoint: sharded safetensors, tokenizer, resolved config.json,
                                         encoding.json (both folders: the folds' encoding, arena_distill/judge.py),
                                         average_report.json, heldout_predictions.parquet, metrics.json,
                                         config.yaml, DONE.json

Averaging. ``method=lora_mean`` (default, the seed's): LoRA A, LoRA B and score-head tensors are averaged element
by element across folds, then merged: W = W0 + s * mean(B) @ mean(A). ``method=delta_mean`` (exact): the
folds' weight deltas are averaged, W = W0 + s * mean_k(B_k @ A_k); the mean of products is not the product of
means, and ``compare=true`` (default) scores the held-out rows with both and reports how far they disagree
(the merged model is built once; the other method is reached by adding the difference
s * (mean_k(B_k A_k) - mean(B) mean(A)) in place and removing it again). The head is averaged in both.
Every fold model saw the other folds' dev rows in training, so the averaged model's held-out numbers are
optimistic: they check the merge, they are not a CV score.

Launch (repository root; one process: merging is not data parallel):
    python src/08_average_merge.py --config configs/tiny.yaml
    python src/08_average_merge.py --config configs/a100x8.yaml method=delta_mean force=true
    sh run_final.sh                                                     # 8 -> 9 -> report
On a GPU box the merge and the check run on cuda:0 (``device=auto``); fp32 merge of a 9B model needs ~40 GB.

Idempotent: a done ``final_merged`` (DONE.json) is skipped unless force=true; outputs are built under
temporary names and renamed into place. The base model must be full precision (a quantized base is refused:
merge first, then quantize with stage 9).
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from arena_distill import config as C  # noqa: E402
from arena_distill import encoding_record  # noqa: E402
from arena_distill.dist import pick_dtype, print0, seed_everything, warn0  # noqa: E402
from arena_distill.io import (atomic_dir, atomic_write_json, check_done, fingerprint, is_done, mark_done, read_done, require_done, run_stage,  # noqa: E402
                              StageInputError)
from arena_distill.metrics import accuracy, log_loss  # noqa: E402
from arena_distill.models import check_not_quantized, load_classifier, load_peft, load_tokenizer  # noqa: E402
from arena_distill.metrics import softmax  # noqa: E402
from arena_distill.readers import check_adapter_folder, read_json, read_parquet  # noqa: E402
from arena_distill.scoring import score_classifier  # noqa: E402

ADAPTER_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class AverageConfig:
    student: str = C.field("", help="student name (common): averages <save_dir>/<student>fold<k>/")
    n_folds: int = C.field(5, help="number of folds (common)")
    folds: list[int] = C.field([], help="folds to average (each must be done); [] = every finished fold of n_folds")
    save_dir: str = C.field("model_save", help="adapters and merged models (common)")
    model_dir: str = C.field("model_path", help="base checkpoints (common)")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data, for the held-out check (common)")
    seed: int = C.field(2025, help="seed for sampling held-out rows (common)")
    base_model: str = C.field("", help="base checkpoint folder; empty = base_model of the fold adapters' config.yaml")
    method: Literal["lora_mean", "delta_mean"] = C.field(
        "lora_mean", help="lora_mean = average A, B, head (the seed); delta_mean = average s*B@A deltas (exact)")
    compare: bool = C.field(True, help="score held-out rows with both methods and report their disagreement")
    eval_rows: int = C.field(2000, help="held-out rows for the check (sampled from all folds' dev rows); 0 = none")
    eval_batch: int = C.field(8, help="rows per batch for the check")
    eval_max_tokens: int = C.field(0, help="padded tokens per batch for the check; 0 = no limit")
    merge_dtype: str = C.field("fp32", help="dtype of the arithmetic (fp32 keeps the small deltas exact)")
    save_dtype: str = C.field("auto", help="dtype of the saved checkpoint; auto = the base checkpoint's")
    device: str = C.field("auto", help="auto = cuda:0 when available, else cpu")
    max_shard_size: str = C.field("5GB", help="safetensors shard size of the merged checkpoint")
    avg_adapter_dir: str = C.field("", help="averaged adapter folder; empty = <save_dir>/<student>_avg")
    out_dir: str = C.field("", help="merged checkpoint folder; empty = <save_dir>/final_merged")
    force: bool = C.field(False, help="redo a merge that is already done")

    def __post_init__(self) -> None:
        if self.eval_batch < 1:
            raise ValueError("eval_batch must be >= 1")


# --------------------------------------------------------------------------------------------- helpers
def load_fold_adapters(fold_dirs: list[Path]) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """Each fold's adapter tensors; all folds must have the same LoRA config and tensor names/shapes."""
    from safetensors.torch import load_file

    states, configs = [], []
    for d in fold_dirs:
        check_adapter_folder(d)  # a corrupt config / truncated adapter file: named, not a traceback
        configs.append(read_json(d / "adapter_config.json"))
        states.append(load_file(str(d / ADAPTER_FILE)))
    keys = ("r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out")
    for d, cfg, st in zip(fold_dirs[1:], configs[1:], states[1:]):
        diff = [k for k in keys if cfg.get(k) != configs[0].get(k)]
        if diff or set(st) != set(states[0]) or any(st[k].shape != states[0][k].shape for k in st):
            raise StageInputError(f"{d} does not match {fold_dirs[0]} (LoRA config {diff or 'ok'}, tensors "
                                  f"{'differ' if set(st) != set(states[0]) else 'same names'}): folds must be "
                                  "trained with the same LoRA settings to be averaged")
    if configs[0].get("use_dora"):
        raise StageInputError("DoRA adapters cannot be averaged as plain LoRA; train without use_dora")
    return states, configs[0]


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean over folds (in fp32, cast back to the stored dtype)."""
    return {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}


def lora_corrections(peft_model, states: list[dict[str, torch.Tensor]]) -> dict[str, tuple[float, bool]]:
    """``{module_name: (scale, fan_in_fan_out)}`` for every LoRA layer of the loaded PEFT model."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in getattr(module, "scaling", {}):
            key = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            if f"{PEFT_PREFIX}{key}.lora_A.weight" in states[0]:
                out[key] = (float(module.scaling["default"]), bool(getattr(module, "fan_in_fan_out", False)))
    return out


@torch.no_grad()
def apply_delta_difference(model, states: list[dict[str, torch.Tensor]], layers: dict[str, tuple[float, bool]],
                           sign: float) -> float:
    """W += sign * s * (mean_k(B_k @ A_k) - mean(B) @ mean(A)) for every LoRA layer (lora_mean <-> delta_mean).

    Returns the largest absolute weight change (how far the two methods are apart in weight space)."""
    modules = dict(model.named_modules())
    largest = 0.0
    for key, (scale, fan_in_fan_out) in layers.items():
        a = [s[f"{PEFT_PREFIX}{key}.lora_A.weight"].double() for s in states]
        b = [s[f"{PEFT_PREFIX}{key}.lora_B.weight"].double() for s in states]
        exact = sum(bk @ ak for ak, bk in zip(a, b)) / len(a)
        approx = (sum(b) / len(b)) @ (sum(a) / len(a))
        diff = scale * (exact - approx)
        if fan_in_fan_out:
            diff = diff.T
        weight = modules[key].weight
        weight += (sign * diff).to(device=weight.device, dtype=weight.dtype)
        largest = max(largest, float(diff.abs().max()))
    return largest


def base_dtype(base: Path) -> torch.dtype:
    """The dtype the base checkpoint was saved in (bf16 for the real Gemma2-9b, fp32 for the tiny models)."""
    saved = read_json(base / "config.json")
    name = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def heldout_rows(cfg: AverageConfig, folds: list[int]) -> pd.DataFrame | None:
    frames = []
    for k in folds:
        path = Path(cfg.processed_dir) / f"{cfg.student}fold{k}" / "dev.parquet"
        if path.is_file():
            frames.append(read_parquet(path, columns=["id", "label", "input_ids"]).assign(fold=k))
    if not frames or cfg.eval_rows <= 0:
        return None
    dev = pd.concat(frames, ignore_index=True)
    if len(dev) > cfg.eval_rows:
        dev = dev.sample(n=cfg.eval_rows, random_state=cfg.seed).sort_index()
    return dev.reset_index(drop=True)


def evaluate(model, dev: pd.DataFrame, pad_id: int, cfg: AverageConfig, device, desc: str) -> np.ndarray:
    seqs = [list(x) for x in dev["input_ids"]]
    _, logits, _ = score_classifier(model, seqs, pad_id, batch_size=cfg.eval_batch,
                                   max_tokens=cfg.eval_max_tokens or None, device=device, desc=desc)
    return softmax(logits)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(AverageConfig, "average", argv)
    if not cfg.student:
        raise StageInputError("no student set: set common.student in the profile or student=<name>")
    seed_everything(cfg.seed)
    folds = cfg.folds or [k for k in range(cfg.n_folds) if is_done(Path(cfg.save_dir) / f"{cfg.student}fold{k}")]
    if not folds:
        raise StageInputError(f"no finished student fold in {cfg.save_dir}/{cfg.student}fold<k>/ (DONE.json)"
                              " -> run first: sh run_pipeline.sh 0  (and the other folds)")
    if not cfg.folds and len(folds) < cfg.n_folds:
        warn0(f"only folds {folds} of {cfg.n_folds} are finished: averaging those (run sh run_pipeline.sh <k> for "
              "the others, then FORCE=1 sh run_final.sh)")
    save = Path(cfg.save_dir)
    out_dir = Path(cfg.out_dir or save / "final_merged")
    avg_dir = Path(cfg.avg_adapter_dir or save / f"{cfg.student}_avg")
    # The folds actually averaged are part of the settings: a merge of fold 0 alone is stale once all
    # folds are finished. Evaluation keys only change the report, not the merged weights.
    fp = {**fingerprint(cfg, exclude=("compare", "eval_rows", "eval_batch", "eval_max_tokens", "avg_adapter_dir")),
          "folds": folds}
    if check_done(out_dir, fp, cfg.force, "average"):
        return {"skipped": True, **read_done(out_dir)}

    # ------------------------------------------------------------------------------------- inputs
    fold_dirs = [require_done(save / f"{cfg.student}fold{k}", f"sh run_pipeline.sh {k}  (distills the student on "
                              f"fold {k})", what=f"student adapter fold {k}") for k in folds]
    for d in fold_dirs:
        if not (d / ADAPTER_FILE).is_file():
            raise StageInputError(f"{d}/{ADAPTER_FILE} is missing: not a PEFT adapter folder")
    bases = {str(C.read_saved_config(d / "config.yaml").get("base_model", "")) for d in fold_dirs
             if (d / "config.yaml").is_file()}
    base = Path(cfg.base_model) if cfg.base_model else (Path(bases.pop()) if len(bases) == 1 else None)
    if base is None:
        base = Path(cfg.model_dir) / cfg.student
        if bases:
            raise StageInputError(f"fold adapters name different base models {sorted(bases)}: set base_model=...")
    if not (base / "config.json").is_file():
        raise StageInputError(f"base model {base} not found (config.json missing) -> run first: sh run_data.sh "
                              "(tiny profile) or download the checkpoint into model_path/")
    check_not_quantized(base)
    device = torch.device("cuda", 0) if cfg.device == "auto" and torch.cuda.is_available() else (
        torch.device("cpu") if cfg.device == "auto" else torch.device(cfg.device))
    print0(f"[average] {cfg.student}: folds {folds} -> {avg_dir} -> {out_dir} | base {base} | method {cfg.method} "
           f"| device {device}")

    # ------------------------------------------------------------------------------------- average adapters
    t0 = time.perf_counter()
    states, lora_cfg = load_fold_adapters(fold_dirs)
    avg = average_states(states)
    try:  # how the folds' rows were encoded: the judge (arena_distill.judge) must encode the same way
        record = encoding_record.from_processed(cfg.processed_dir, [f"{cfg.student}fold{k}" for k in folds])
    except encoding_record.EncodingRecordError as exc:
        record = None
        warn0(f"{exc}; the merged model gets no {encoding_record.RECORD_FILE} (pass the encoding to the judge)")
    from safetensors.torch import save_file

    with atomic_dir(avg_dir) as tmp:
        shutil.copy2(fold_dirs[0] / "adapter_config.json", tmp / "adapter_config.json")
        save_file(avg, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        C.save_config(cfg, tmp, base_model=str(base), folds=folds, averaged_from=[str(d) for d in fold_dirs])
        if record is not None:
            encoding_record.write_record(tmp, record)
        mark_done(tmp, fingerprint=fp, stage="average", method="lora_mean", folds=folds)
    print0(f"[average] averaged {len(avg)} tensors over {len(folds)} folds (r={lora_cfg.get('r')}, "
           f"alpha={lora_cfg.get('lora_alpha')}) -> {avg_dir}")

    # ------------------------------------------------------------------------------------- merge
    tokenizer = load_tokenizer(base)
    merge_dtype = pick_dtype(cfg.merge_dtype, device)
    model = load_classifier(base, num_labels=3, dtype=merge_dtype, pad_token_id=tokenizer.pad_token_id)
    peft_model = load_peft(model, avg_dir)
    layers = lora_corrections(peft_model, states)
    model = peft_model.merge_and_unload().to(device)
    if cfg.method == "delta_mean":
        apply_delta_difference(model, states, layers, +1.0)
    print0(f"[average] merged {len(layers)} LoRA layers ({cfg.method}) in {time.perf_counter() - t0:.1f} s")

    # ------------------------------------------------------------------------------------- held-out check
    report: dict = {"method": cfg.method, "folds": folds, "base_model": str(base), "lora_layers": len(layers),
                    "optimistic_note": "each fold model trained on the other folds' dev rows: these held-out "
                                       "numbers check the merge, they are not a CV estimate"}
    dev = heldout_rows(cfg, folds)
    predictions = None
    if dev is None:
        warn0(f"no held-out rows ({cfg.processed_dir}/{cfg.student}fold<k>/dev.parquet) or eval_rows=0: check skipped")
    else:
        labels = dev["label"].to_numpy().astype(int)
        probs = {cfg.method: evaluate(model, dev, tokenizer.pad_token_id, cfg, device, f"check {cfg.method}")}
        if cfg.compare:
            other = "lora_mean" if cfg.method == "delta_mean" else "delta_mean"
            sign = +1.0 if other == "delta_mean" else -1.0
            report["max_weight_difference"] = apply_delta_difference(model, states, layers, sign)
            probs[other] = evaluate(model, dev, tokenizer.pad_token_id, cfg, device, f"check {other}")
            apply_delta_difference(model, states, layers, -sign)  # back to the chosen method before saving
        for name, p in probs.items():
            report[name] = {"log_loss": log_loss(p, labels), "accuracy": accuracy(p, labels), "n": len(labels)}
        if cfg.compare:
            d = np.abs(probs["lora_mean"] - probs["delta_mean"])
            report["disagreement"] = {
                "mean_abs_prob_diff": float(d.mean()), "max_abs_prob_diff": float(d.max()),
                "log_loss_delta": report["delta_mean"]["log_loss"] - report["lora_mean"]["log_loss"],
                "argmax_agreement": float((probs["lora_mean"].argmax(1) == probs["delta_mean"].argmax(1)).mean())}
            print0(f"[average] held-out ({len(labels)} rows, optimistic): lora_mean log loss "
                   f"{report['lora_mean']['log_loss']:.4f}, delta_mean {report['delta_mean']['log_loss']:.4f}, "
                   f"max |dp| {d.max():.2e}, mean |dp| {d.mean():.2e}")
        predictions = dev[["id", "fold", "label"]].copy()
        for name, p in probs.items():
            for j, col in enumerate(("p_a", "p_b", "p_tie")):
                predictions[f"{col}_{name}"] = p[:, j].astype(np.float32)

    # ------------------------------------------------------------------------------------- save
    save_dtype = pick_dtype(cfg.save_dtype, device) if cfg.save_dtype != "auto" else base_dtype(base)
    model = model.to(device="cpu", dtype=save_dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), max_shard_size=cfg.max_shard_size)
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "average_report.json", report)
        if predictions is not None:
            predictions.to_parquet(tmp / "heldout_predictions.parquet", index=False)
        chosen = report.get(cfg.method)
        if chosen:
            atomic_write_json(tmp / "metrics.json", {"model": f"{cfg.student} (fold average, {cfg.method})",
                                                     "valid_log_loss": chosen["log_loss"],
                                                     "valid_accuracy": chosen["accuracy"], "n_valid": chosen["n"],
                                                     "optimistic": True})
        C.save_config(cfg, tmp, base_model=str(base), averaged_adapter=str(avg_dir), folds=folds)
        if record is not None:
            encoding_record.write_record(tmp, record)
        mark_done(tmp, fingerprint=fp, stage="average", method=cfg.method, folds=folds, dtype=str(save_dtype),
                  seconds=round(time.perf_counter() - t0, 1))
    print0(f"[average] wrote {out_dir} ({str(save_dtype).replace('torch.', '')}) in "
           f"{time.perf_counter() - t0:.1f} s")
    return report


if __name__ == "__main__":
    run_stage(main)
