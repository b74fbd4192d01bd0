"""Predict the Kaggle test set and write ``sub/submission.csv`` (config section ``predict``).

Reads   test_csv (default ``<data_dir>/test.csv``, Kaggle test schema: id, prompt, response_a, response_b)
        a model: ``model_save/final_model_gptq/`` (GPTQ, what ``sh run_final.sh`` writes, or the published
        8-bit model downloaded there), ``model_save/final_merged/`` (full precision), or base + adapter
        (``model_save/<student>_avg/`` or any fold adapter); ``model_source=auto`` takes the first present.
Writes  out (default ``sub/submission.csv``): id,winner_model_a,winner_model_b,winner_tie, one row per test
        id in test order, validated before it is renamed into place (an invalid file never lands there);
        ``<out dir>/predict_report.json``: model, settings, rows/s, seconds (+ log loss when the sample data's
        truth.csv covers the test ids).

Launch (repository root):
    python predict_test.py                                        # $CONFIG or configs/a100x8.yaml; 1 GPU / CPU
    python predict_test.py --config configs/tiny.yaml test_csv=/path/to/test.csv model_source=merged
    accelerate launch --num_processes 2 predict_test.py           # 2 GPUs (Kaggle T4 x2): both TTA orders at once
    torchrun --nproc_per_node 8 predict_test.py                   # N GPUs: the batches are split across processes

Same parsing (``arena_text.read_arena_csv``), template and truncation (``arena_text.encode_batch``) as the
training data, at ``max_length`` tokens (2000 by default, more than training's 1024: the model generalises
to longer inputs and long rows lose less). Each text is tokenized once in batched calls; the A/B-swapped
order reuses the same part tokens. Rows are scored in length-sorted batches (no padding beyond each batch's
longest row), logits are put back in file order, and with ``tta=true`` the swapped probabilities are
mapped back ([pB, pA, pT] -> [pA, pB, pT]) and averaged with the straight ones. Dtype: bf16 on GPUs that
have it, fp16 on older ones (T4), fp32 on CPU. Not a cached stage: every run predicts afresh.

Encodings (``encoding_mode=``; ``encoding=`` is the CSV's text encoding):
    ours        the training data's encoding (``arena_text.encode_rows``: BOS by the tokenizer's convention,
                the seed's template and truncation rules; keys inherited from ``prepare``)
    seed_exact  the seed's ``src/predict_test.py`` byte for byte (``arena_distill.seed_encoding``): for the
                seed's published 8-bit model, which was trained on the seed's rows (docs/fidelity.md)
``dump_encodings=<path>`` writes the scored sequences as JSONL (``id``, ``swapped``, ``input_ids``).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from arena_distill import config as C  # noqa: E402
from arena_distill import encoding_record  # noqa: E402
from arena_distill.arena_text import (PROMPT_MAX_TOKENS, PROMPT_MAX_WORDS, RESPONSE_MAX_WORDS,  # noqa: E402
                                      encode_batch, encode_batch_both, read_arena_csv)
from arena_distill.dist import pick_device, print0, rank, world_size  # noqa: E402
from arena_distill.io import atomic_write_json, atomic_write_jsonl, require, run_stage  # noqa: E402
from arena_distill.metrics import log_loss, softmax  # noqa: E402
from arena_distill.predict import (gather_parts, load_for_prediction, resolve_model_source, run_tag,  # noqa: E402
                                   tta_combine, write_part, write_submission)
from arena_distill.scoring import score_classifier  # noqa: E402
from arena_distill.seed_encoding import read_seed_test_csv, seed_encode, seed_pooling_view  # noqa: E402
from arena_distill.readers import read_csv  # noqa: E402


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class PredictConfig:
    data_dir: str = C.field("data/lmsys-chatbot-arena", help="Kaggle files folder (common)")
    save_dir: str = C.field("model_save", help="adapters and merged/quantized models (common)")
    student: str = C.field("", help="student name (common); default adapter folder is <save_dir>/<student>_avg")
    test_csv: str = C.field("", help="Kaggle-format test file; empty = <data_dir>/test.csv")
    model_source: Literal["auto", "gptq", "merged", "adapter"] = C.field(
        "auto", help="auto = gptq if present, else merged, else adapter")
    gptq_dir: str = C.field("", help="quantized model folder; empty = <save_dir>/final_model_gptq")
    merged_dir: str = C.field("", help="merged full-precision folder; empty = <save_dir>/final_merged")
    adapter_dir: str = C.field("", help="PEFT adapter folder; empty = <save_dir>/<student>_avg")
    base_model: str = C.field("", help="base checkpoint of the adapter; empty = read from the adapter's config.yaml")
    max_length: int = C.field(2000, help="tokens per row incl. template and EOS (seed inference: 2000)")
    # Truncation must match training: unset = the model folder's encoding.json (stages 8/9 write it), else the
    # profile's `prepare` value.
    prompt_max_tokens: int | None = C.field(None, help="prompt token cap; unset = as trained (see above)")
    prompt_max_words: int | None = C.field(None, help="prompt word cap; unset = prepare's")
    response_max_words: int | None = C.field(None, help="per-response word cap; unset = prepare's")
    truncation_side: Literal["right", "left"] | None = C.field(None, help="unset = prepare's")
    word_split: Literal["seed", "whitespace"] | None = C.field(None, help="word caps on split(' ') or \\S+; "
                                                                "unset = prepare's")
    prompt_cap: Literal["seed", "always"] | None = C.field(None, help="unset = prepare's")
    bos: Literal["auto", "none"] | None = C.field(None, help="unset = prepare's")
    # Not `encoding`: that key is the CSV's text encoding (utf-8-sig).
    encoding_mode: Literal["ours", "seed_exact"] = C.field("ours", help="ours = the training data's encoding; "
                                                           "seed_exact = the seed's predict_test.py byte for byte "
                                                           "(for the seed's published model)")
    dump_encodings: str = C.field("", help="write the scored sequences here as JSONL (id, swapped, input_ids)")
    bad_json: Literal["error", "repair"] = C.field("repair", help="a non-JSON text cell: keep it as raw text "
                                                   "(repair) or stop (error)")
    encoding: str = C.field("utf-8-sig", help="text encoding of test_csv: UTF-8 (a byte-order mark dropped); e.g. "
                                              "cp1252 for a file a spreadsheet saved (bytes are never replaced)")
    batch_size: int = C.field(8, help="rows per batch (at most)")
    max_tokens: int = C.field(0, help="padded tokens per batch (rows x longest row) at most; 0 = no limit")
    sort: bool = C.field(True, help="length-sorted batches (false = file order, the speed baseline)")
    tta: bool = C.field(True, help="also score every row with A and B swapped and average (mapped back)")
    dtype: str = C.field("auto", help="auto = bf16 (GPU with bf16) / fp16 (T4) / fp32 (CPU); or fp32/bf16/fp16")
    attn_implementation: str = C.field("", help="'' = transformers default; e.g. sdpa, eager")
    out: str = C.field("sub/submission.csv", help="submission path")
    truth_csv: str = C.field("", help="true labels for a test log loss (sample data); empty = <data_dir>/truth.csv "
                                      "when present")
    gather_timeout_s: float = C.field(3600.0, help="multi-process: how long rank 0 waits for the other parts")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.max_length < 32:
            raise ValueError("max_length must be >= 32")


def truth_log_loss(truth_csv: Path, ids: np.ndarray, probs: np.ndarray) -> dict | None:
    """Log loss against the sample generator's labels, plus that of its true probabilities (the floor)."""
    truth = read_csv(truth_csv)
    if not {"id", "label", "p_a", "p_b", "p_tie"} <= set(truth.columns):
        return None
    truth = truth.drop_duplicates("id").set_index("id")
    if not pd.Index(ids).isin(truth.index).all():
        return None
    rows = truth.loc[ids]
    labels = rows["label"].to_numpy().astype(int)
    return {"truth_csv": str(truth_csv), "n": int(len(ids)), "log_loss": log_loss(probs, labels),
            "best_achievable_log_loss": log_loss(rows[["p_a", "p_b", "p_tie"]].to_numpy(), labels)}


def inherit_truncation(cfg: PredictConfig, model_folder: Path | None = None) -> str:
    """Fill unset truncation keys: the model folder's ``encoding.json`` (how its training rows were encoded,
    written by stages 8/9), else the profile's ``prepare`` section, else the seed's defaults. Keys set on the
    command line or in ``predict`` win. ``max_length`` stays predict's own (the seed predicted at 2000).
    Returns where the values came from."""
    record = None
    if model_folder is not None and (Path(model_folder) / encoding_record.RECORD_FILE).is_file():
        record = encoding_record.read_record(model_folder).get("encoding", {})
    prepare = C.read_profile(cfg.__dict__["_profile_path"]).get("prepare", {}) if "_profile_path" in cfg.__dict__ \
        else {}
    defaults = {"prompt_max_tokens": PROMPT_MAX_TOKENS, "prompt_max_words": PROMPT_MAX_WORDS,
                "response_max_words": RESPONSE_MAX_WORDS, "truncation_side": "right", "word_split": "seed",
                "prompt_cap": "seed", "bos": "auto"}
    for key, default in defaults.items():
        if getattr(cfg, key) is None:
            if record is not None:
                # a record from before a key existed: the legacy value (how those rows were encoded)
                value = record.get(key, encoding_record.LEGACY_VALUES.get(key, default))
            else:
                value = prepare.get(key, default)
            setattr(cfg, key, value)
    return f"{model_folder}/{encoding_record.RECORD_FILE}" if record is not None else "the profile's prepare section"


def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(PredictConfig, "predict", argv)
    t_start = time.perf_counter()
    rk, world = rank(), world_size()
    device = pick_device()

    # ------------------------------------------------------------------------------------- inputs
    test_csv = Path(cfg.test_csv or Path(cfg.data_dir) / "test.csv")
    require(test_csv, "sh run_data.sh (sample data), or put Kaggle's test.csv there / set test_csv=...",
            what="test file")
    kind, folder = resolve_model_source(cfg.model_source, cfg.gptq_dir or Path(cfg.save_dir) / "final_model_gptq",
                                        cfg.merged_dir or Path(cfg.save_dir) / "final_merged",
                                        cfg.adapter_dir or Path(cfg.save_dir) / f"{cfg.student}_avg")
    encoding_from = inherit_truncation(cfg, folder)
    print0(f"[predict] test {test_csv} | model {kind}: {folder} | device {device} | world {world} | "
           f"max_length {cfg.max_length} | tta {cfg.tta} | sorted {cfg.sort} | encoding from {encoding_from}")
    if cfg.encoding_mode == "seed_exact":  # the seed reads with pandas' defaults and parses cells itself
        test = read_seed_test_csv(test_csv)
        test["id"] = pd.to_numeric(test["id"], errors="raise")
    else:
        test = read_arena_csv(test_csv, kind="test", bad_json=cfg.bad_json, encoding=cfg.encoding)
    ids = test["id"].to_numpy()
    n = len(test)

    # ------------------------------------------------------------------------------------- model + encoding
    model, tokenizer = load_for_prediction(kind, folder, base_model=cfg.base_model, dtype=cfg.dtype, device=device,
                                           attn_implementation=cfg.attn_implementation or None)
    t0 = time.perf_counter()
    enc_kw = dict(max_length=cfg.max_length, prompt_max_tokens=cfg.prompt_max_tokens,
                  prompt_max_words=cfg.prompt_max_words, response_max_words=cfg.response_max_words,
                  truncation_side=cfg.truncation_side, word_split=cfg.word_split, prompt_cap=cfg.prompt_cap,
                  bos=cfg.bos)
    prompts, resp_a, resp_b = test["prompt"].tolist(), test["response_a"].tolist(), test["response_b"].tolist()
    if cfg.encoding_mode == "seed_exact":  # the seed's own encoding, both orders (its TTA)
        seed = seed_encode(tokenizer, prompts, resp_a, resp_b, max_length=cfg.max_length, row_ids=ids.tolist())
        sequences = seed.straight + (seed.swapped if cfg.tta else [])
        if seed.repairs:
            print0(f"[predict] seed_exact: repaired text the seed's tokenizer call cannot take: {dict(seed.repairs)}")
    elif cfg.tta:  # both orders from one tokenization of the parts
        straight, swapped = encode_batch_both(tokenizer, prompts, resp_a, resp_b, **enc_kw)
        sequences = straight.input_ids + swapped.input_ids
    else:
        sequences = encode_batch(tokenizer, prompts, resp_a, resp_b, **enc_kw)
    encode_s = time.perf_counter() - t0
    if cfg.dump_encodings and rk == 0:
        atomic_write_jsonl(cfg.dump_encodings, [{"id": int(ids[i % n]) if n else 0, "swapped": i >= n,
                                                 "input_ids": [int(t) for t in seq]}
                                                for i, seq in enumerate(sequences)])
        print0(f"[predict] wrote {len(sequences)} encodings ({cfg.encoding_mode}) to {cfg.dump_encodings}")
    lengths = np.array([len(s) for s in sequences])
    print0(f"[predict] {n} rows, {len(sequences)} sequences, tokens mean {lengths.mean() if n else 0:.0f} "
           f"max {lengths.max() if n else 0}, encoded in {encode_s:.1f} s, dtype {next(model.parameters()).dtype}")

    # ------------------------------------------------------------------------------------- scoring
    if cfg.encoding_mode == "seed_exact":  # the seed pools before the first EOS id (an EOS text inside a row)
        sequences = seed_pooling_view(sequences, tokenizer.eos_token_id)
    idx, logits, stats = score_classifier(model, sequences, tokenizer.pad_token_id, batch_size=cfg.batch_size,
                                         max_tokens=cfg.max_tokens or None, sort=cfg.sort, shard=(rk, world),
                                         device=device, desc=f"predict[{rk}/{world}]")
    if world > 1:
        out_dir = Path(cfg.out).parent
        tag = run_tag(test_csv.resolve(), test_csv.stat().st_mtime_ns, folder.resolve(), C.config_dict(cfg))
        write_part(out_dir / ".predict_parts", tag, rk, world, idx, logits, stats)
        if rk != 0:
            return {"rank": rk, **stats}
        logits = gather_parts(out_dir / ".predict_parts", tag, world, len(sequences), cfg.gather_timeout_s)
    probs_all = softmax(logits)
    probs = tta_combine(probs_all[:n], probs_all[n:] if cfg.tta else None)

    # ------------------------------------------------------------------------------------- submission
    out = write_submission(cfg.out, ids, probs, test_ids=ids)
    report = {"test_csv": str(test_csv), "rows": n, "model_source": kind, "model": str(folder),
              "device": str(device), "world_size": world, "dtype": str(next(model.parameters()).dtype),
              "max_length": cfg.max_length, "tta": cfg.tta, "encoding_mode": cfg.encoding_mode,
              "encode_options": ({"seed_exact": True, "max_length": cfg.max_length} if cfg.encoding_mode == "seed_exact"
                                 else enc_kw), "sorted": cfg.sort, "batch_size": cfg.batch_size,
              "max_tokens": cfg.max_tokens, "encode_seconds": round(encode_s, 2),
              "rank0_scoring": stats, "total_seconds": round(time.perf_counter() - t_start, 2),
              "submission": str(out)}
    if cfg.tta and n:
        p_straight, p_swapped = probs_all[:n], probs_all[n:][:, [1, 0, 2]]
        report["tta_mean_abs_diff"] = float(np.abs(p_straight - p_swapped).mean())
    truth = Path(cfg.truth_csv or Path(cfg.data_dir) / "truth.csv")
    if n and truth.is_file():
        scored = truth_log_loss(truth, ids, probs)
        if scored:
            report["truth"] = scored
            print0(f"[predict] test log loss vs {truth}: {scored['log_loss']:.4f} "
                   f"(true probabilities: {scored['best_achievable_log_loss']:.4f})")
    atomic_write_json(out.parent / "predict_report.json", report)
    print0(f"[predict] wrote {out} ({n} rows) | scoring {stats['rows_per_s']:.1f} sequences/s on rank 0, "
           f"padding efficiency {stats['padding_efficiency']:.3f} | total {report['total_seconds']:.1f} s")
    return report


if __name__ == "__main__":
    run_stage(main)
