"""Stage 9: GPTQ-quantize the merged student and check it against the full-precision model (section ``quantize``).

Reads   model_save/final_merged/ (stage 8, DONE.json), <data_dir>/train.csv (calibration texts),
        data/processed_data/<student>fold<k>/dev.parquet (held-out rows for the check; train.csv rows
        outside the calibration sample when absent)
Writes  model_save/final_model_gptq/  GPTQ checkpoint + tokenizer (all predict_test.py needs), encoding.json
        (copied from the merged folder),
        quant_report.json (fp vs quantized: log loss of each, delta, max / mean probability difference,
        quantization time), config.yaml, DONE.json

Quantization goes through transformers ``GPTQConfig`` backed by GPTQModel (``arena_distill.quant``):
GPTQModel's own loader would turn the classifier into a causal LM and drop the score head. Defaults as
the seed: 8 bit, group size 128, 128 calibration texts built with the training template, truncated to
2100 tokens; ``bits`` (8/4/3/2), ``group_size``, ``n_calibration`` and ``calibration_max_length`` are
config keys. The score head stays in full precision.

Launch (repository root; one process, cuda:0 when present):
    python src/09_quantize.py --config configs/tiny.yaml
    python src/09_quantize.py --config configs/a100x8.yaml bits=4 out_dir=model_save/final_model_gptq4
    sh run_final.sh                                                    # 8 -> 9 -> report
On CPU, GPTQMODEL_CPU_WORKERS defaults to 2 (needed on small machines); the first quantization on a fresh
machine compiles a small C++ extension (~35 s, once).

Idempotent: a done output (DONE.json) is skipped unless force=true; the checkpoint folder is built under a
temporary name and renamed into place, DONE.json is written after the check.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from arena_distill import config as C  # noqa: E402
from arena_distill import encoding_record  # noqa: E402
from arena_distill import quant  # noqa: E402
from arena_distill.arena_text import encode_batch, read_arena_csv  # noqa: E402
from arena_distill.dist import pick_device, pick_dtype, print0, seed_everything, warn0  # noqa: E402
from arena_distill.io import (atomic_write_json, check_done, fingerprint, mark_done, read_done, require_done, run_stage,  # noqa: E402
                              StageInputError)
from arena_distill.metrics import accuracy, log_loss  # noqa: E402
from arena_distill.models import load_tokenizer  # noqa: E402
from arena_distill.metrics import softmax  # noqa: E402
from arena_distill.predict import load_for_prediction  # noqa: E402
from arena_distill.scoring import score_classifier  # noqa: E402
from arena_distill.readers import read_parquet  # noqa: E402


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class QuantizeConfig:
    student: str = C.field("", help="student name (common), for the held-out dev rows")
    n_folds: int = C.field(5, help="number of folds (common)")
    seed: int = C.field(2025, help="seed for the calibration / check samples (common)")
    data_dir: str = C.field("data/lmsys-chatbot-arena", help="Kaggle files folder (common)")
    processed_dir: str = C.field("data/processed_data", help="tokenized fold data (common)")
    save_dir: str = C.field("model_save", help="adapters and merged/quantized models (common)")
    merged_dir: str = C.field("", help="full-precision merged model; empty = <save_dir>/final_merged")
    out_dir: str = C.field("", help="quantized model folder; empty = <save_dir>/final_model_gptq")
    bits: int = C.field(8, help="GPTQ bits: 8 (seed), 4, 3 or 2")
    group_size: int = C.field(128, help="GPTQ group size (seed: 128); -1 = one group per row")
    desc_act: bool = C.field(False, help="activation-order quantization (slower kernels; seed: off)")
    sym: bool = C.field(True, help="symmetric quantization")
    damp_percent: float = C.field(0.1, help="Hessian dampening")
    n_calibration: int = C.field(128, help="calibration rows sampled from train.csv (seed: 128)")
    calibration_max_length: int = C.field(2100, help="calibration tokens per row (seed: 2100)")
    calibration_csv: str = C.field("", help="calibration source; empty = <data_dir>/train.csv")
    compare: bool = C.field(True, help="score held-out rows with the fp and the quantized model and report")
    eval_rows: int = C.field(1000, help="held-out rows for the check (0 = no check)")
    eval_batch: int = C.field(8, help="rows per batch for the check")
    eval_max_tokens: int = C.field(0, help="padded tokens per batch for the check; 0 = no limit")
    dtype: str = C.field("auto", help="compute dtype: auto = bf16 / fp16 (T4) on GPU, fp32 on CPU")
    force: bool = C.field(False, help="redo a quantization that is already done")

    def __post_init__(self) -> None:
        if self.bits not in quant.SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {quant.SUPPORTED_BITS}")
        if self.n_calibration < 1:
            raise ValueError("n_calibration must be >= 1")


# --------------------------------------------------------------------------------------------- helpers
def held_out(cfg: QuantizeConfig, train: pd.DataFrame | None, calibration_ids: set, tokenizer,
             max_length: int) -> tuple[pd.DataFrame | None, str]:
    """Held-out rows with ``input_ids`` and ``label``: the student's dev folds, else train.csv rows that
    were not used for calibration."""
    frames = [read_parquet(p, columns=["id", "label", "input_ids"])
              for k in range(cfg.n_folds)
              if (p := Path(cfg.processed_dir) / f"{cfg.student}fold{k}" / "dev.parquet").is_file()]
    if frames:
        dev, source = pd.concat(frames, ignore_index=True), f"{cfg.processed_dir}/{cfg.student}fold*/dev.parquet"
    elif train is not None:
        rest = train[~train["id"].isin(calibration_ids)]
        rest = rest.sample(n=min(len(rest), cfg.eval_rows), random_state=cfg.seed + 1)
        ids = encode_batch(tokenizer, rest["prompt"].tolist(), rest["response_a"].tolist(),
                           rest["response_b"].tolist(), max_length=max_length)
        dev, source = pd.DataFrame({"id": rest["id"].to_numpy(), "label": rest["label"].to_numpy(),
                                    "input_ids": ids}), "train.csv rows outside the calibration sample"
    else:
        return None, "none"
    if len(dev) > cfg.eval_rows:
        dev = dev.sample(n=cfg.eval_rows, random_state=cfg.seed).sort_index()
    return dev.reset_index(drop=True), source


def score(kind: str, folder: Path, dev: pd.DataFrame, cfg: QuantizeConfig, device) -> np.ndarray:
    model, tok = load_for_prediction(kind, folder, dtype=cfg.dtype, device=device)
    _, logits, stats = score_classifier(model, [list(x) for x in dev["input_ids"]], tok.pad_token_id,
                                       batch_size=cfg.eval_batch, max_tokens=cfg.eval_max_tokens or None,
                                       device=device, desc=f"check {kind}")
    del model
    gc.collect()
    return softmax(logits)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(QuantizeConfig, "quantize", argv)
    seed_everything(cfg.seed)
    save = Path(cfg.save_dir)
    merged = Path(cfg.merged_dir or save / "final_merged")
    out = Path(cfg.out_dir or save / "final_model_gptq")
    fp = fingerprint(cfg, exclude=("compare", "eval_rows", "eval_batch", "eval_max_tokens"))
    if check_done(out, fp, cfg.force, "quantize"):
        return {"skipped": True, **read_done(out)}
    require_done(merged, "python src/08_average_merge.py  (or sh run_final.sh)", what="merged model")
    if quant.is_quantized(merged):
        raise StageInputError(f"{merged} is already quantized: point merged_dir at the full-precision merge")
    device = pick_device()
    print0(f"[quantize] {merged} -> {out} | {cfg.bits} bit, group {cfg.group_size}, {cfg.n_calibration} "
           f"calibration rows x {cfg.calibration_max_length} tokens | device {device}")

    # ------------------------------------------------------------------------------------- calibration
    tokenizer = load_tokenizer(merged)
    calib_csv = Path(cfg.calibration_csv or Path(cfg.data_dir) / "train.csv")
    train = None
    if calib_csv.is_file():
        train = read_arena_csv(calib_csv, kind="train", bad_json="repair")
        sample = train.sample(n=min(cfg.n_calibration, len(train)), random_state=cfg.seed)
        calibration = encode_batch(tokenizer, sample["prompt"].tolist(), sample["response_a"].tolist(),
                                   sample["response_b"].tolist(), max_length=cfg.calibration_max_length)
        calibration_ids, calib_source = set(sample["id"].tolist()), str(calib_csv)
    else:
        rows = [p for k in range(cfg.n_folds)
                if (p := Path(cfg.processed_dir) / f"{cfg.student}fold{k}" / "train.parquet").is_file()]
        if not rows:
            raise StageInputError(f"no calibration texts: {calib_csv} is missing and no processed train data"
                                  " -> run first: sh run_data.sh (or set calibration_csv=...)")
        frame = read_parquet(rows[0], columns=["id", "input_ids"])
        frame = frame.sample(n=min(cfg.n_calibration, len(frame)), random_state=cfg.seed)
        calibration, calibration_ids, calib_source = [list(x) for x in frame["input_ids"]], set(), str(rows[0])
        warn0(f"{calib_csv} missing: calibrating on {rows[0]} rows (training max length)")

    # ------------------------------------------------------------------------------------- quantize
    dtype = pick_dtype(cfg.dtype, device)
    info = quant.quantize_classifier(merged, out, calibration, tokenizer, bits=cfg.bits, group_size=cfg.group_size,
                                     max_length=cfg.calibration_max_length, desc_act=cfg.desc_act, sym=cfg.sym,
                                     damp_percent=cfg.damp_percent, dtype=dtype)
    info["calibration_source"] = calib_source
    print0(f"[quantize] quantized in {info['quantize_seconds']:.1f} s ({info['n_calibration']} rows, mean "
           f"{info['calibration_tokens_mean']:.0f} tokens)")

    # ------------------------------------------------------------------------------------- fp vs quantized
    report = {"merged_dir": str(merged), "out_dir": str(out), **info}
    if cfg.compare and cfg.eval_rows > 0:
        dev, source = held_out(cfg, train, calibration_ids, tokenizer, cfg.calibration_max_length)
        if dev is None:
            warn0("no held-out rows for the fp vs quantized check: skipped")
        else:
            labels = dev["label"].to_numpy().astype(int)
            t0 = time.perf_counter()
            p_fp = score("merged", merged, dev, cfg, device)
            p_q = score("gptq", out, dev, cfg, device)
            diff = np.abs(p_fp - p_q)
            report["check"] = {
                "rows": len(labels), "source": source, "seconds": round(time.perf_counter() - t0, 1),
                "fp_log_loss": log_loss(p_fp, labels), "quant_log_loss": log_loss(p_q, labels),
                "log_loss_delta": log_loss(p_q, labels) - log_loss(p_fp, labels),
                "fp_accuracy": accuracy(p_fp, labels), "quant_accuracy": accuracy(p_q, labels),
                "max_abs_prob_diff": float(diff.max()), "mean_abs_prob_diff": float(diff.mean()),
                "argmax_agreement": float((p_fp.argmax(1) == p_q.argmax(1)).mean()),
                "note": "dev rows were seen by the other folds' models: absolute log losses are optimistic; "
                        "the fp vs quantized delta is the point"}
            c = report["check"]
            print0(f"[quantize] held-out {c['rows']} rows: fp log loss {c['fp_log_loss']:.4f} | {cfg.bits}-bit "
                   f"{c['quant_log_loss']:.4f} (delta {c['log_loss_delta']:+.5f}) | max |dp| "
                   f"{c['max_abs_prob_diff']:.4f}, mean |dp| {c['mean_abs_prob_diff']:.5f}")
    atomic_write_json(out / "quant_report.json", report)
    C.save_config(cfg, out, merged_dir=str(merged))
    encoding_record.copy_record(merged, out)  # the judge encodes as in training (arena_distill/judge.py)
    mark_done(out, fingerprint=fp, stage="quantize", bits=cfg.bits, group_size=cfg.group_size,
              log_loss_delta=report.get("check", {}).get("log_loss_delta"))
    print0(f"[quantize] wrote {out}")
    return report


if __name__ == "__main__":
    run_stage(main)
