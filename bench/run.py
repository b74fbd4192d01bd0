#!/usr/bin/env python
"""Speed and memory benchmark: our prediction and distillation-training paths against naive baselines.

    python bench/run.py                    # CPU preset (or the GPU preset when CUDA is present), ~4 min on 2 cores
    python bench/run.py --preset smoke     # minute configuration (seconds): keeps the script working
    python bench/run.py --preset gpu       # GPU sizes: max_length 2000, bigger model, bf16, MFU + 25k projection

One process, one model checkpoint, one set of rows for every path. What is timed:

1. Prediction, test rows with A/B-swap TTA (each row scored twice):
   - ours  = ``predict_test.py``'s path through the library: ``arena_text.encode_batch_both`` (straight +
     swapped from one tokenization) -> ``scoring.score_classifier`` (length-sorted dynamic batches, ``sort=True``,
     ``max_tokens``) -> ``metrics.softmax`` -> ``predict.tta_combine``;
   - naive = rows in file order (``batching.file_order_batches``), every batch padded to ``max_length``
     (``batching.collate(pad_to=...)``), same batch size, same encoding, same TTA, ``torch.no_grad``.
   Both produce the same probabilities (checked: ``max_abs_prob_diff``).
2. Distillation training, LoRA (same rank/alpha/targets/dropout, same micro-batch, same rows):
   - ours  = stage 7's micro-batch step: ``batching.length_grouped_batches`` + ``batching.collate`` (pad to the
     batch's longest row) + ``losses.distill_loss`` + ``models.add_lora`` + ``train_utils`` optimizer/schedule/
     accelerator, the loop body of ``src/07_distill_student.py``;
   - hf_group = what a user would pick instead: HF ``Trainer`` with ``train_sampling_strategy="group_by_length"``
     (transformers 5's name for ``group_by_length=True``: ``LengthGroupedSampler``) and dynamic padding
     (``DataCollatorWithPadding(padding="longest")``), the *same* ``distill_loss`` through ``compute_loss``;
   - naive = HF ``Trainer`` with ``DataCollatorWithPadding(padding="max_length")``, random order, the *same*
     ``distill_loss`` through a ``compute_loss`` override, same optimizer settings and grad clipping.
   Reported as real (non-pad) tokens per second. ``--lengths kaggle`` trains on rows with the length
   distribution of the real Kaggle data (long: at max_length 512 about 5 of 6 rows are cut) instead of the
   sample data's short rows (see ``kaggle_like_rows``).
3. Memory: peak RSS (CPU; the kernel's high-water mark reset before each run) or peak allocated (CUDA).
4. GPU extras: forward TFLOP/s and MFU (2 x non-embedding params x tokens / time over the measured bf16
   matmul rate), projected wall time for 25k test rows with TTA from the measured rows/s.

Warm-up first, then ``repeats`` runs per path, interleaved (naive, ours, ours, naive, ...) so a change in
machine load hits both; medians are reported. Writes ``<out-dir>/<name>.md`` (the table, printed last)
and ``<out-dir>/<name>.json`` (settings, per-run raw numbers, medians). Asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

# OMP_WAIT_POLICY=PASSIVE (read when torch loads OpenMP, so it is set before the import): with the default
# spinning barriers, 2 OpenMP threads on 2 cores that other processes also use run small ops up to ~70x slower
# (docs/benchmarks.md); passive waiting costs nothing measurable on a quiet machine. Override from the shell.
for _k, _v in (("OMP_WAIT_POLICY", "PASSIVE"), ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
               ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error")):
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from arena_distill.arena_text import encode_batch, encode_batch_both, encode_batch_detailed, read_arena_csv  # noqa: E402
from arena_distill.batching import (collate, file_order_batches, length_grouped_batches, padding_efficiency,  # noqa: E402
                                    sorted_batches)
from arena_distill.dist import pick_dtype  # noqa: E402
from arena_distill.losses import distill_loss  # noqa: E402
from arena_distill.metrics import softmax  # noqa: E402
from arena_distill.models import add_lora, load_classifier, load_tokenizer  # noqa: E402
from arena_distill.predict import tta_combine  # noqa: E402
from arena_distill.scoring import score_classifier  # noqa: E402
from arena_distill.train_utils import build_optimizer, cosine_schedule, make_accelerator  # noqa: E402

# ------------------------------------------------------------------------------------------------ config

PRESETS: dict[str, dict[str, Any]] = {
    # a model where compute dominates on 2 CPU cores; sizes chosen so the whole run stays under ~5 minutes
    "cpu": dict(arch="llama", hidden=512, layers=4, heads=8, kv_heads=2, intermediate=1536, vocab=16000,
                pred_rows=96, pred_batch=8, pred_max_tokens=2048, train_rows=32, train_batch=4, max_length=512, repeats=3,
                warmup_batches=1, dtype="fp32", threads=2),
    # a GPU: production lengths, a model big enough to load the device (~0.36 B non-embedding params), bf16
    "gpu": dict(arch="llama", hidden=2048, layers=8, heads=16, kv_heads=4, intermediate=5632, vocab=32000,
                pred_rows=1000, pred_batch=16, pred_max_tokens=16384, train_rows=256, train_batch=4, max_length=2000,
                repeats=3,
                warmup_batches=2, dtype="auto", threads=0),
    # minute configuration for the smoke test: every path runs, numbers mean nothing
    "smoke": dict(arch="llama", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1000,
                  pred_rows=8, pred_batch=4, pred_max_tokens=256, train_rows=8, train_batch=4, max_length=128, repeats=1,
                  warmup_batches=1, dtype="fp32", threads=1),
}

TARGETS = {"predict_rows_per_s_ratio": 3.0, "predict_padding_efficiency": 0.95, "train_tokens_per_s_ratio": 2.0,
           # issue 9: against what a user would pick instead (HF Trainer, group_by_length, dynamic padding)
           "train_tokens_per_s_vs_hf_group": 1.0, "train_padding_efficiency": 0.95, "train_memory_vs_hf_group": 1.0}
N_TEACHERS = 2          # the seed distils two teachers: (CE + KL1 + cos1 + KL2 + cos2) / 5
PROJECT_ROWS = 25_000   # Kaggle's hidden test set, about 25k rows
PROJECT_MAX_LENGTH = 2000


@dataclasses.dataclass
class Settings:
    preset: str
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    pred_rows: int
    pred_batch: int
    pred_max_tokens: int
    train_rows: int
    train_batch: int
    max_length: int
    repeats: int
    warmup_batches: int
    dtype: str
    threads: int
    attn_implementation: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lr: float
    seed: int
    data_dir: str
    cache_dir: str
    out_dir: str
    name: str
    skip: list[str]
    lengths: str = "data"


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="sizes: cpu (default without CUDA), gpu (default with CUDA), smoke (seconds)")
    for key, typ, help_ in (
            ("arch", str, "llama or gemma2 (gemma2 runs eager attention, as the production student)"),
            ("hidden", int, "hidden size"), ("layers", int, "decoder layers"), ("heads", int, "attention heads"),
            ("kv_heads", int, "key/value heads (GQA)"), ("intermediate", int, "MLP width"),
            ("vocab", int, "BPE vocabulary trained on the sample text"),
            ("pred_rows", int, "test rows to predict (x2 sequences with TTA)"),
            ("pred_batch", int, "prediction rows per batch (both paths)"),
            ("pred_max_tokens", int, "ours: padded tokens per batch at most (predict_test's max_tokens; 0 = none); "
                                     "presets use batch x max_length / 2 as configs/a100x8.yaml does"),
            ("train_rows", int, "training rows per pass"), ("train_batch", int, "training micro-batch (both paths)"),
            ("max_length", int, "tokens per row (template + truncation + EOS); naive pads every batch to it"),
            ("repeats", int, "timed runs per path (median reported)"),
            ("warmup_batches", int, "batches per path run untimed first"),
            ("dtype", str, "fp32, bf16, fp16 or auto (bf16 on GPU, fp32 on CPU)"),
            ("threads", int, "torch intra-op threads (0 = leave torch's default)")):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=typ, default=None, help=help_)
    p.add_argument("--attn-implementation", default="", help="'' = transformers default (sdpa; eager for gemma2)")
    p.add_argument("--lora-r", type=int, default=64, help="LoRA rank (production student: 64)")
    p.add_argument("--lora-alpha", type=int, default=128, help="LoRA alpha (production student: 128)")
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--data-dir", default=str(REPO / "data" / "lmsys-chatbot-arena"),
                   help="Kaggle-format test.csv/train.csv (real or sample); generated into the cache when missing")
    p.add_argument("--cache-dir", default=str(REPO / "bench" / ".cache"), help="built model + tokenizer (git-ignored)")
    p.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    p.add_argument("--name", default="", help="result file stem; default = the preset name")
    p.add_argument("--skip", default="", help="comma list of parts to skip: predict, train")
    p.add_argument("--lengths", choices=["data", "kaggle"], default="data",
                   help="training rows: data = the data folder's rows (sample data: short); kaggle = synthetic token "
                        "rows with the real Kaggle length distribution (kaggle_like_rows)")
    a = p.parse_args(argv)
    preset = a.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    values = dict(PRESETS[preset])
    for key in values:
        if getattr(a, key, None) is not None:
            values[key] = getattr(a, key)
    skip = [s.strip() for s in a.skip.split(",") if s.strip()]
    bad = set(skip) - {"predict", "train"}
    if bad:
        p.error(f"--skip: unknown part(s) {sorted(bad)}")
    return Settings(preset=preset, **values, attn_implementation=a.attn_implementation, lora_r=a.lora_r,
                    lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout, lr=a.lr, seed=a.seed, data_dir=a.data_dir,
                    cache_dir=a.cache_dir, out_dir=a.out_dir, name=a.name or preset, skip=skip, lengths=a.lengths)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ device + memory

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one run: CUDA peak allocated, or the process's peak RSS.

    CPU: freed memory is handed back to the OS first (``gc`` + ``malloc_trim``) and the kernel's RSS
    high-water mark is reset (``/proc/self/clear_refs`` = 5), so ``VmHWM`` afterwards is this run's peak;
    where that is impossible a 2 ms sampling thread (psutil) stands in. ``delta`` = peak - memory at start.
    """

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self.sampler: threading.Thread | None = None
        if CUDA:
            sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            self.kind = "cuda_peak_allocated"
            return self
        _malloc_trim()
        self.kind = "peak_rss"
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = (_proc_status_kib("VmRSS") or 0) * 1024
            self.hwm = True
        except OSError:
            import psutil

            self.hwm, proc, self._stop = False, psutil.Process(), threading.Event()
            self.start = self._peak = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss)
                    time.sleep(0.002)

            self.sampler = threading.Thread(target=sample, daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if CUDA:
            sync()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.hwm:
            self.peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            assert self.sampler is not None
            self.sampler.join()
            self.peak = self._peak
        self.delta = max(self.peak - self.start, 0)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "peak_bytes": int(self.peak), "start_bytes": int(self.start),
                "delta_bytes": int(self.delta)}


# ------------------------------------------------------------------------------------------------ data + model

def load_frames(s: Settings) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    """(test rows for prediction, labelled train rows, data source, tokenizer corpus) parsed exactly as
    predict_test.py / stage 2 parse them; the corpus is every text of train.csv, test.csv and the Tianchi files."""
    data = Path(s.data_dir)
    source = os.path.relpath(data, REPO) if data.resolve().is_relative_to(REPO) else str(data)
    if not ((data / "test.csv").is_file() and (data / "train.csv").is_file()):
        from arena_distill.sample_data import make_sample

        data = Path(s.cache_dir) / "data"
        source = f"generated by arena_distill.sample_data (seed {s.seed}) into {data}"
        if not (data / "test.csv").is_file():
            n_train = max(s.train_rows * 2, 64)
            files, _ = make_sample(n_train=n_train, n_test=max(s.pred_rows, 16), n_33k=1, n_ut=1, seed=s.seed)  # 0 extra rows trips make_sample
            data.mkdir(parents=True, exist_ok=True)
            for key in ("train", "test"):
                files[key].to_csv(data / f"{key}.csv.tmp", index=False)
                os.replace(data / f"{key}.csv.tmp", data / f"{key}.csv")
    test = read_arena_csv(data / "test.csv", kind="test", bad_json="repair")
    train = read_arena_csv(data / "train.csv", kind="train", bad_json="repair")
    if len(test) < s.pred_rows:  # more prediction rows than test.csv has: continue with train rows (texts only)
        extra = train.iloc[: s.pred_rows - len(test)][list(test.columns)]
        test = pd.concat([test, extra], ignore_index=True)
    test = test.iloc[: s.pred_rows].reset_index(drop=True)
    # training rows: a seeded random subset, kept in file order (the Trainer shuffles, ours length-groups)
    pick = np.sort(np.random.default_rng(s.seed).choice(len(train), size=min(s.train_rows, len(train)), replace=False))
    corpus = [t for frame in (train, test) for col in ("prompt", "response_a", "response_b") for t in frame[col].tolist()]
    # + the Tianchi logic text when present, as stage 1 does (Chinese text: a fuller BPE vocabulary)
    from arena_distill.tiny import iter_corpus

    corpus += list(iter_corpus(sorted((REPO / "data" / "tianchi_logic").glob("*.jsonl")), max_chars=3_000_000))
    return test, train.iloc[pick].reset_index(drop=True), source, corpus


def build_or_load_model(s: Settings, corpus: list[str]) -> tuple[Path, dict[str, Any]]:
    """The benchmark checkpoint, built once with the project's ``tiny`` helpers into the cache folder."""
    from arena_distill.io import atomic_dir, mark_done, read_done
    from arena_distill.tiny import build_tiny_model, train_bpe_tokenizer

    tag = (f"{s.arch}_h{s.hidden}_l{s.layers}_a{s.heads}_kv{s.kv_heads}_i{s.intermediate}_v{s.vocab}"
           f"_p{max(s.max_length, 2048)}_s{s.seed}")
    folder = Path(s.cache_dir) / "models" / tag
    if (folder / "DONE.json").is_file():
        return folder, read_done(folder)
    t0 = time.perf_counter()
    texts, total = [], 0
    budget = 300_000 if s.preset == "smoke" else 6_000_000  # smoke: a 1k vocabulary needs little text
    for t in corpus:  # at most ~6 M characters: a few seconds of BPE training
        texts.append(t)
        total += len(t)
        if total > budget:
            break
    tok = train_bpe_tokenizer(texts, s.vocab, family=s.arch, model_max_length=max(s.max_length, 2048))
    with atomic_dir(folder) as tmp:
        info = build_tiny_model(s.arch, tok, tmp, hidden_size=s.hidden, num_layers=s.layers, num_heads=s.heads,
                                num_kv_heads=s.kv_heads, intermediate_size=s.intermediate,
                                max_position_embeddings=max(s.max_length, 2048), seed=s.seed)
        mark_done(tmp, **info, build_seconds=round(time.perf_counter() - t0, 1))
    log(f"built {folder} in {time.perf_counter() - t0:.1f} s")
    return folder, read_done(folder)


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "score" not in n
               and "lora_" not in n)


def encode_kwargs(s: Settings) -> dict[str, Any]:
    # predict_test.py's defaults except max_length; the prompt cap keeps the seed's 256 / 1024 ratio at short lengths
    return dict(max_length=s.max_length, prompt_max_tokens=min(256, s.max_length // 4))


# ------------------------------------------------------------------------------------------------ prediction

def predict_ours(model, tok, frame: pd.DataFrame, s: Settings) -> tuple[np.ndarray, dict[str, float]]:
    """predict_test.py main() with tta=true, minus file I/O: both orders from one tokenization
    (encode_batch_both), length-sorted scoring (score_classifier, sort=True), softmax, TTA average."""
    kw = encode_kwargs(s)
    n = len(frame)
    prompts, resp_a, resp_b = frame["prompt"].tolist(), frame["response_a"].tolist(), frame["response_b"].tolist()
    t0 = time.perf_counter()
    straight, swapped = encode_batch_both(tok, prompts, resp_a, resp_b, **kw)
    sequences = straight.input_ids + swapped.input_ids
    t_enc = time.perf_counter() - t0
    _, logits, _ = score_classifier(model, sequences, tok.pad_token_id, batch_size=s.pred_batch,
                                    max_tokens=s.pred_max_tokens or None, sort=True, device=DEVICE, progress=False)
    probs_all = softmax(logits)
    probs = tta_combine(probs_all[:n], probs_all[n:])
    sync()
    return probs, {"seconds": time.perf_counter() - t0, "encode_seconds": t_enc}


@torch.no_grad()
def predict_naive(model, tok, frame: pd.DataFrame, s: Settings) -> tuple[np.ndarray, dict[str, float]]:
    """The baseline: file order, per batch encode, every batch padded to max_length, straight then swapped."""
    kw = encode_kwargs(s)
    model.eval()
    n = len(frame)
    prompts, resp_a, resp_b = frame["prompt"].tolist(), frame["response_a"].tolist(), frame["response_b"].tolist()
    logits = np.zeros((2, n, 3), dtype=np.float32)
    t0, t_enc = time.perf_counter(), 0.0
    for batch in file_order_batches(n, s.pred_batch):
        p = [prompts[i] for i in batch]
        a = [resp_a[i] for i in batch]
        b = [resp_b[i] for i in batch]
        for k, (first, second) in enumerate(((a, b), (b, a))):
            te = time.perf_counter()
            seqs = encode_batch(tok, p, first, second, **kw)
            t_enc += time.perf_counter() - te
            ids, mask = collate(seqs, tok.pad_token_id, pad_to=s.max_length)
            out = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE)).logits
            logits[k, batch] = out.float().cpu().numpy()
    probs = tta_combine(softmax(logits[0]), softmax(logits[1]))
    sync()
    return probs, {"seconds": time.perf_counter() - t0, "encode_seconds": t_enc}


def bench_predict(s: Settings, base: Path, frame: pd.DataFrame) -> dict[str, Any]:
    tok = load_tokenizer(base)
    model = load_classifier(base, dtype=s.dtype, attn_implementation=s.attn_implementation or None,
                            pad_token_id=tok.pad_token_id).to(DEVICE).eval()
    n = len(frame)
    kw = encode_kwargs(s)
    seqs = (encode_batch(tok, frame["prompt"].tolist(), frame["response_a"].tolist(), frame["response_b"].tolist(), **kw)
            + encode_batch(tok, frame["prompt"].tolist(), frame["response_b"].tolist(), frame["response_a"].tolist(), **kw))
    lengths = np.array([len(x) for x in seqs])
    plan_ours = sorted_batches(lengths, s.pred_batch, s.pred_max_tokens or None)
    plan_naive = [np.concatenate([b, b + n]) for b in file_order_batches(n, s.pred_batch)]  # straight, swapped
    plan_naive = [half for b in plan_naive for half in (b[: len(b) // 2], b[len(b) // 2:])]
    real = int(lengths.sum())
    computed = {"ours": sum(len(b) * int(lengths[b].max()) for b in plan_ours),
                "naive": sum(len(b) * s.max_length for b in plan_naive)}
    eff = {"ours": padding_efficiency(plan_ours, lengths), "naive": padding_efficiency(plan_naive, lengths, s.max_length)}

    # warm-up: a few batches of each path (kernels, allocator, thread pools)
    w = max(s.warmup_batches, 1) * s.pred_batch
    predict_ours(model, tok, frame.iloc[:w], s)
    predict_naive(model, tok, frame.iloc[: min(w, n)], s)
    fns: dict[str, Callable] = {"ours": predict_ours, "naive": predict_naive}
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "naive": []}
    probs: dict[str, np.ndarray] = {}
    for r in range(s.repeats):
        for key in (("naive", "ours") if r % 2 == 0 else ("ours", "naive")):
            with PeakMemory() as mem:
                probs[key], t = fns[key](model, tok, frame, s)
            t.update(rows_per_s=n / t["seconds"], memory=mem.as_dict())
            runs[key].append(t)
            log(f"predict {key:5s} run {r + 1}/{s.repeats}: {t['seconds']:.2f} s, {n / t['seconds']:.2f} rows/s, "
                f"peak {mem.peak / 2**20:.0f} MiB (+{mem.delta / 2**20:.0f})")
    out: dict[str, Any] = {"rows": n, "sequences": len(seqs), "real_tokens": real, "computed_tokens": computed,
                           "padding_efficiency": eff, "runs": runs,
                           "max_abs_prob_diff": float(np.abs(probs["ours"] - probs["naive"]).max()),
                           "non_embedding_params": non_embedding_params(model),
                           "dtype": str(next(model.parameters()).dtype),
                           "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    for key in ("ours", "naive"):
        sec = statistics.median(x["seconds"] for x in runs[key])
        out[key] = {"seconds": sec, "rows_per_s": n / sec, "sequences_per_s": len(seqs) / sec,
                    "real_tokens_per_s": real / sec, "computed_tokens_per_s": computed[key] / sec,
                    "encode_seconds": statistics.median(x["encode_seconds"] for x in runs[key]),
                    "peak_bytes": max(x["memory"]["peak_bytes"] for x in runs[key]),
                    "delta_bytes": max(x["memory"]["delta_bytes"] for x in runs[key])}
    out["rows_per_s_ratio"] = out["ours"]["rows_per_s"] / out["naive"]["rows_per_s"]
    del model
    return out


# ------------------------------------------------------------------------------------------------ training

def train_model(s: Settings, base: Path, pad_id: int):
    """Base classifier + fresh LoRA, seeded: both paths start from identical weights."""
    model = load_classifier(base, dtype=s.dtype, attn_implementation=s.attn_implementation or None, pad_token_id=pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        return add_lora(model, r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout, target_modules=["all-linear"])


# Kaggle Arena rows (prompt + both responses through the seed template) are long: at max_length 512 about
# 5 of 6 real rows are cut (issue 9). A log-normal with median 1,100 tokens and sigma 0.8 reproduces that
# (P(length > 512) = 0.83) and a long tail (p90 ~3,100, at max_length 2000 about 1 in 4 rows cut).
KAGGLE_MEDIAN_TOKENS, KAGGLE_SIGMA = 1100, 0.8


def kaggle_like_rows(n: int, max_length: int, vocab: int, avoid: set[int], seed: int) -> list[list[int]]:
    """``n`` token rows whose lengths follow the real Kaggle distribution, cut to ``max_length``. Token ids are
    random (speed does not depend on them), drawn from the vocabulary minus the special tokens in ``avoid``."""
    rng = np.random.default_rng([seed, 7])
    lengths = np.clip(np.round(rng.lognormal(np.log(KAGGLE_MEDIAN_TOKENS), KAGGLE_SIGMA, n)), 32, max_length)
    allowed = np.setdiff1d(np.arange(vocab), np.fromiter(avoid, dtype=np.int64))
    return [rng.choice(allowed, int(k)).tolist() for k in lengths]


def ours_train_step(acc, model, optimizer, scheduler, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                    teacher_logits: list[torch.Tensor], grad_clip: float = 1.0) -> float:
    """One micro-batch of the training engine's step as stage 7 runs it (``arena_distill.engine.train``: forward,
    distill_loss, backward, clip, AdamW step, schedule, the per-step loss sync), without the engine's
    checkpoint/log/eval bookkeeping, which is not what this benchmark times."""
    with acc.accumulate(model):
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss, _ = distill_loss(logits, labels, teacher_logits, 1.0)
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    scheduler.step()
    return acc.reduce(loss.detach(), "mean").item()


class OursTrainer:
    """Stage 7's loop body (src/07_distill_student.py) with accumulation 1: one optimizer step per micro-batch."""

    def __init__(self, s: Settings, base: Path, seqs: list[list[int]], labels: np.ndarray,
                 teachers: list[torch.Tensor], pad_id: int):
        self.s, self.seqs, self.labels, self.teachers, self.pad_id = s, seqs, labels, teachers, pad_id
        self.lengths = [len(x) for x in seqs]
        self.accelerator = make_accelerator(1, "auto")
        model = train_model(s, base, pad_id)
        optimizer = build_optimizer(model, s.lr, (0.9, 0.95), 0.0)
        self.scheduler = cosine_schedule(optimizer, 0, 10_000)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.model.train()
        self.epoch = 0
        self.computed, self.cpu_seconds = 0, 0.0  # padded tokens and CPU seconds of the last run

    def run(self, n_batches: int | None = None) -> tuple[float, int]:
        """One pass over the rows (length-grouped micro-batches of a new epoch); (seconds, real tokens)."""
        acc, dev = self.accelerator, self.accelerator.device
        # The engine's plan (arena_distill.engine.batch_plan): length-grouped, longest batch first.
        batches = length_grouped_batches(self.lengths, self.s.train_batch, seed=self.s.seed, epoch=self.epoch,
                                         longest_first=True)
        self.epoch += 1
        self.computed = 0
        sync()
        t0, c0, tokens = time.perf_counter(), time.process_time(), 0
        for micro in batches[:n_batches]:
            ids, mask = collate([self.seqs[i] for i in micro], self.pad_id)
            labels = torch.as_tensor(self.labels[micro], device=dev)
            ours_train_step(acc, self.model, self.optimizer, self.scheduler, ids.to(dev), mask.to(dev), labels,
                            [t[micro] for t in self.teachers])
            tokens += int(mask.sum())
            self.computed += mask.numel()
        sync()
        self.cpu_seconds = time.process_time() - c0
        return time.perf_counter() - t0, tokens


class HFTrainer:
    """HF Trainer with the same distill_loss (compute_loss override), optimizer settings and grad clipping.

    ``group_by_length=False``: padding="max_length" through DataCollatorWithPadding, random order (naive).
    ``group_by_length=True``: train_sampling_strategy="group_by_length" (LengthGroupedSampler: mega-batches of
    50 x batch rows sorted by length, transformers/trainer_pt_utils.py) + padding="longest" (dynamic)."""

    def __init__(self, s: Settings, base: Path, tok, seqs: list[list[int]], labels: np.ndarray,
                 teachers: list[torch.Tensor], group_by_length: bool = False):
        from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

        self.s = s
        self.rows = [{"input_ids": seq, "label": int(y), "teacher_logits": [t[i].tolist() for t in teachers]}
                     for i, (seq, y) in enumerate(zip(seqs, labels))]
        if group_by_length:
            inner = DataCollatorWithPadding(tok, padding="longest", return_tensors="pt")
        else:
            inner = DataCollatorWithPadding(tok, padding="max_length", max_length=s.max_length, return_tensors="pt")
        self.computed, self.cpu_seconds = 0, 0.0  # padded tokens handed to the model, CPU seconds: last run

        def collator(features: list[dict]) -> dict[str, torch.Tensor]:
            batch = inner([{"input_ids": f["input_ids"], "label": f["label"]} for f in features])
            batch["teacher_logits"] = torch.tensor([f["teacher_logits"] for f in features], dtype=torch.float32)
            self.computed += batch["input_ids"].numel()
            return batch

        class DistillTrainer(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                labels = inputs.pop("labels")
                teacher = inputs.pop("teacher_logits")
                outputs = model(**inputs)
                loss, _ = distill_loss(outputs.logits, labels, [teacher[:, k] for k in range(teacher.shape[1])], 1.0)
                return (loss, outputs) if return_outputs else loss

        timer = self

        class EpochTimer(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kw):
                sync()
                timer.t_begin, timer.c_begin = time.perf_counter(), time.process_time()

            def on_epoch_end(self, args, state, control, **kw):
                sync()
                timer.epoch_seconds.append(time.perf_counter() - timer.t_begin)
                timer.cpu_seconds = time.process_time() - timer.c_begin

        self.epoch_seconds: list[float] = []
        bf16 = CUDA and s.dtype in ("auto", "bf16") and pick_dtype(s.dtype) is torch.bfloat16  # sm80+ (dist rule)
        args = TrainingArguments(
            output_dir=str(Path(s.cache_dir) / "trainer_out"), per_device_train_batch_size=s.train_batch,
            gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=s.lr, adam_beta1=0.9, adam_beta2=0.95,
            weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=0,
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=CUDA, use_cpu=not CUDA, bf16=bf16,
            remove_unused_columns=False, seed=s.seed,
            train_sampling_strategy="group_by_length" if group_by_length else "random")
        self.trainer = DistillTrainer(model=train_model(s, base, tok.pad_token_id), args=args, data_collator=collator,
                                      train_dataset=self.rows, callbacks=[EpochTimer()])
        from transformers import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # its end-of-train metrics dict per run is noise here

    def run(self, n_batches: int | None = None) -> tuple[float, int]:
        """One Trainer epoch over the rows (or the first n_batches x batch rows); (seconds of the epoch, real tokens)."""
        rows = self.rows if n_batches is None else self.rows[: n_batches * self.s.train_batch]
        self.trainer.train_dataset = rows
        self.computed = 0
        self.trainer.train()
        return self.epoch_seconds[-1], sum(len(r["input_ids"]) for r in rows)


TRAIN_PATHS = ("ours", "hf_group", "naive")
PLAN_ROWS = (48, 1_000, 20_000)        # batch-plan padding at the benchmark's size and at real fold sizes
PLAN_MAX_LENGTHS = (512, 2000)


def plan_padding(s: Settings) -> dict[str, Any]:
    """Padding efficiency of the batch plans alone (no model): ours (``length_grouped_batches``), HF's
    ``LengthGroupedSampler`` order (``get_length_grouped_indices``, cut into micro-batches as its DataLoader
    does), random order with dynamic padding, and max_length padding, for Kaggle-like lengths at the
    benchmark's row count and at real fold sizes. HF picks its mega-batch as min(n // (4 x batch), 50)
    batches, so at a few dozen rows it sorts within small groups; at thousands of rows both use 50."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    out: dict[str, Any] = {}
    for max_length in PLAN_MAX_LENGTHS:
        for n in PLAN_ROWS:
            rng = np.random.default_rng([s.seed, n])
            lengths = np.clip(np.round(rng.lognormal(np.log(KAGGLE_MEDIAN_TOKENS), KAGGLE_SIGMA, n)), 32, max_length)
            b = s.train_batch
            ours = length_grouped_batches(lengths, b, seed=s.seed)
            order = get_length_grouped_indices(lengths.tolist(), b, generator=torch.Generator().manual_seed(s.seed))
            hf = [np.asarray(order[i:i + b]) for i in range(0, n, b)]
            rand = [np.asarray(x) for x in np.array_split(rng.permutation(n), range(b, n, b))]
            out[f"{max_length}/{n}"] = {"rows": n, "max_length": max_length, "batch": b,
                                       "cut_fraction": float(np.mean(lengths >= max_length)),
                                       "ours": padding_efficiency(ours, lengths),
                                       "hf_group": padding_efficiency(hf, lengths),
                                       "random_dynamic": padding_efficiency(rand, lengths),
                                       "max_length_pad": padding_efficiency(rand, lengths, pad_to=max_length)}
    return out


def bench_train(s: Settings, base: Path, frame: pd.DataFrame) -> dict[str, Any]:
    tok = load_tokenizer(base)
    if s.lengths == "kaggle":
        avoid = set(tok.all_special_ids) | ({tok.pad_token_id} if tok.pad_token_id is not None else set())
        seqs = kaggle_like_rows(len(frame), s.max_length, len(tok), avoid, s.seed)
        source = (f"synthetic rows, Kaggle length distribution (log-normal, median {KAGGLE_MEDIAN_TOKENS} tokens, "
                  f"sigma {KAGGLE_SIGMA}), cut to max_length {s.max_length}")
    else:
        seqs = encode_batch(tok, frame["prompt"].tolist(), frame["response_a"].tolist(), frame["response_b"].tolist(),
                            **encode_kwargs(s))
        source = "the data folder's train.csv rows, encoded as stage 2 does"
    labels = frame["label"].to_numpy(np.int64)
    rng = np.random.default_rng(s.seed)
    teachers = [torch.from_numpy(rng.normal(0, 1.5, (len(seqs), 3)).astype(np.float32)) for _ in range(N_TEACHERS)]
    lengths = np.array([len(x) for x in seqs])
    real = int(lengths.sum())
    paths = {"ours": OursTrainer(s, base, seqs, labels, teachers, tok.pad_token_id),
             "hf_group": HFTrainer(s, base, tok, seqs, labels, teachers, group_by_length=True),
             "naive": HFTrainer(s, base, tok, seqs, labels, teachers, group_by_length=False)}
    for key, path in paths.items():  # warm-up
        path.run(max(s.warmup_batches, 1))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in TRAIN_PATHS}
    for r in range(s.repeats):  # rotate the order so a change in machine load hits every path
        for key in TRAIN_PATHS[r % 3:] + TRAIN_PATHS[:r % 3]:
            with PeakMemory() as mem:
                sec, tokens = paths[key].run()
            computed, cpu = paths[key].computed, paths[key].cpu_seconds
            # CPU seconds of this process (all its threads): on a machine shared with other jobs, wall time
            # swings with their load; the CPU time the path itself spent is the steadier comparison.
            runs[key].append({"seconds": sec, "cpu_seconds": cpu, "real_tokens": tokens, "computed_tokens": computed,
                              "real_tokens_per_s": tokens / sec, "real_tokens_per_cpu_s": tokens / cpu,
                              "memory": mem.as_dict()})
            log(f"train   {key:8s} run {r + 1}/{s.repeats}: {sec:.2f} s ({cpu:.1f} CPU s), {tokens / sec:.0f} real tok/s, "
                f"padding eff {tokens / computed:.3f}, peak {mem.peak / 2**20:.0f} MiB (+{mem.delta / 2**20:.0f})")
    out: dict[str, Any] = {"rows": len(seqs), "real_tokens": real, "runs": runs, "lengths": s.lengths,
                           "source": source,
                           "token_percentiles": {f"p{q}": float(np.percentile(lengths, q)) for q in (10, 50, 90, 100)},
                           "cut_fraction": float(np.mean(lengths >= s.max_length)),
                           "padding_efficiency": {k: real * len(runs[k]) / sum(x["computed_tokens"] for x in runs[k])
                                                  for k in runs},
                           "naive_loss": "the same distill_loss (CE + 2 x (KL + cos)) / 5 via compute_loss",
                           "teachers": f"{N_TEACHERS} synthetic teachers (seeded normal logits)"}
    for key in TRAIN_PATHS:
        sec = statistics.median(x["seconds"] for x in runs[key])
        cpu = statistics.median(x["cpu_seconds"] for x in runs[key])
        out[key] = {"seconds": sec, "real_tokens_per_s": real / sec, "cpu_seconds": cpu,
                    "real_tokens_per_cpu_s": real / cpu,
                    "peak_bytes": max(x["memory"]["peak_bytes"] for x in runs[key]),
                    "delta_bytes": max(x["memory"]["delta_bytes"] for x in runs[key])}
    out["plan_padding"] = plan_padding(s)
    out["real_tokens_per_s_ratio"] = out["ours"]["real_tokens_per_s"] / out["naive"]["real_tokens_per_s"]
    out["real_tokens_per_s_ratio_vs_hf_group"] = out["ours"]["real_tokens_per_s"] / out["hf_group"]["real_tokens_per_s"]
    out["real_tokens_per_cpu_s_ratio_vs_hf_group"] = (out["ours"]["real_tokens_per_cpu_s"]
                                                      / out["hf_group"]["real_tokens_per_cpu_s"])
    return out


# ------------------------------------------------------------------------------------------------ GPU extras

def matmul_tflops(dtype: torch.dtype, n: int, iters: int) -> float:
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(2):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def flops_extras(pred: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Forward TFLOP/s (2 x non-embedding params x tokens / s; attention score FLOPs not counted) and MFU."""
    dtype = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}.get(pred["dtype"], torch.float32)
    peak = matmul_tflops(dtype, 8192 if CUDA else 1024, 20 if CUDA else 10)
    n_params = pred["non_embedding_params"]
    out: dict[str, Any] = {"matmul_tflops_measured": peak, "matmul_dtype": str(dtype)}
    for key in ("ours", "naive"):
        computed = 2 * n_params * pred[key]["computed_tokens_per_s"] / 1e12
        useful = 2 * n_params * pred[key]["real_tokens_per_s"] / 1e12
        out[key] = {"forward_tflops": computed, "useful_tflops": useful, "mfu": computed / peak,
                    "useful_mfu": useful / peak}
    if s.max_length == PROJECT_MAX_LENGTH:
        out["projected_25k_hours"] = {k: PROJECT_ROWS / pred[k]["rows_per_s"] / 3600 for k in ("ours", "naive")}
    return out


# ------------------------------------------------------------------------------------------------ report

def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def _mark(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def render(res: dict[str, Any]) -> str:
    s = res["settings"]
    mem_name = "peak allocated (GiB)" if res["environment"]["cuda"] else "peak RSS (GiB)"
    lines = [f"# Benchmark `{s['name']}` ({res['environment']['device']})", "",
             f"{res['environment']['date']}; torch {res['environment']['torch']}, transformers "
             f"{res['environment']['transformers']}; {res['environment']['threads']} threads (OMP_WAIT_POLICY={res['environment'].get('omp_wait_policy') or 'unset'}); load average "
             f"{res['environment']['loadavg_start']} at start, {res['environment']['loadavg_end']} at end.", "",
             f"Model: random-weight {s['arch']} classifier, hidden {s['hidden']}, {s['layers']} layers, "
             f"{s['heads']}/{s['kv_heads']} heads, MLP {s['intermediate']}, vocab {res['model']['vocab_size']}, "
             f"{res['model']['non_embedding_params'] / 1e6:.1f} M non-embedding params, {res['model']['dtype']}, "
             f"attention {res['model']['attn_implementation']}. LoRA r {s['lora_r']} alpha {s['lora_alpha']} "
             f"on all linear layers.", "",
             f"Data: {res['data']['source']}. Tokens per test row at max_length {s['max_length']}: "
             + ", ".join(f"{k} {v:.0f}" for k, v in res["data"]["token_percentiles"].items())
             + f"; {100 * res['data']['truncated_fraction']:.1f}% of rows cut to max_length.", "",
             f"Medians of {s['repeats']} interleaved runs after warm-up.", "",
             "| measure | ours | naive | ours / naive | target | met |", "|---|---|---|---|---|---|"]
    p = res.get("predict")
    if p:
        t = res["targets"]
        lines += [
            f"| prediction rows/s ({p['rows']} rows, TTA = {p['sequences']} sequences, batch {s['pred_batch']}) | "
            f"{p['ours']['rows_per_s']:.2f} | {p['naive']['rows_per_s']:.2f} | {p['rows_per_s_ratio']:.2f}x | "
            f">= {TARGETS['predict_rows_per_s_ratio']:.0f}x | {_mark(t['predict_rows_per_s_ratio'])} |",
            f"| prediction padding efficiency (real / computed tokens) | {p['padding_efficiency']['ours']:.3f} | "
            f"{p['padding_efficiency']['naive']:.3f} | | >= {TARGETS['predict_padding_efficiency']} | "
            f"{_mark(t['predict_padding_efficiency'])} |",
            f"| prediction real tokens/s | {p['ours']['real_tokens_per_s']:.0f} | {p['naive']['real_tokens_per_s']:.0f} "
            f"| | | |",
            f"| prediction computed tokens/s (incl. padding) | {p['ours']['computed_tokens_per_s']:.0f} | "
            f"{p['naive']['computed_tokens_per_s']:.0f} | | | |",
            f"| prediction seconds (of which encoding) | {p['ours']['seconds']:.2f} ({p['ours']['encode_seconds']:.2f}) "
            f"| {p['naive']['seconds']:.2f} ({p['naive']['encode_seconds']:.2f}) | | | |",
            f"| prediction {mem_name} (+ over start) | {_gib(p['ours']['peak_bytes'])} (+{_gib(p['ours']['delta_bytes'])}) "
            f"| {_gib(p['naive']['peak_bytes'])} (+{_gib(p['naive']['delta_bytes'])}) | | | |"]
    tr = res.get("train")
    if tr:
        t = res["targets"]
        lines += [
            f"| training real tokens/s ({tr['rows']} rows, micro-batch {s['train_batch']}) | "
            f"{tr['ours']['real_tokens_per_s']:.0f} | {tr['naive']['real_tokens_per_s']:.0f} | "
            f"{tr['real_tokens_per_s_ratio']:.2f}x | >= {TARGETS['train_tokens_per_s_ratio']:.0f}x | "
            f"{_mark(t['train_tokens_per_s_ratio'])} |",
            f"| training padding efficiency | {tr['padding_efficiency']['ours']:.3f} | "
            f"{tr['padding_efficiency']['naive']:.3f} | | | |",
            f"| training seconds per pass | {tr['ours']['seconds']:.2f} | {tr['naive']['seconds']:.2f} | | | |",
            f"| training {mem_name} (+ over start) | {_gib(tr['ours']['peak_bytes'])} (+{_gib(tr['ours']['delta_bytes'])}) "
            f"| {_gib(tr['naive']['peak_bytes'])} (+{_gib(tr['naive']['delta_bytes'])}) | | | |"]
    g = res.get("flops")
    if g:
        unit, scale = ("TFLOP/s", 1.0) if g["matmul_tflops_measured"] >= 1 else ("GFLOP/s", 1e3)
        f = lambda x: f"{x * scale:.1f}"  # noqa: E731
        lines += [
            f"| forward {unit}, computed tokens (MFU vs the measured {f(g['matmul_tflops_measured'])} {unit} "
            f"{g['matmul_dtype'].replace('torch.', '')} matmul) | {f(g['ours']['forward_tflops'])} "
            f"({100 * g['ours']['mfu']:.0f}%) | {f(g['naive']['forward_tflops'])} ({100 * g['naive']['mfu']:.0f}%) | | | |",
            f"| forward {unit}, real tokens only (useful MFU) | {f(g['ours']['useful_tflops'])} "
            f"({100 * g['ours']['useful_mfu']:.0f}%) | {f(g['naive']['useful_tflops'])} "
            f"({100 * g['naive']['useful_mfu']:.0f}%) | | | |"]
        if "projected_25k_hours" in g:
            h = g["projected_25k_hours"]
            lines.append(f"| projected wall time, {PROJECT_ROWS:,} test rows with TTA at max length "
                         f"{PROJECT_MAX_LENGTH} (this model) | {h['ours']:.2f} h | {h['naive']:.2f} h | | | |")
    if p:
        lines += ["", f"Prediction check: ours and naive give the same probabilities (max abs difference "
                      f"{p['max_abs_prob_diff']:.1e})."]
    if tr:
        lines += [f"Training naive baseline: HF Trainer + DataCollatorWithPadding(padding=\"max_length\"), "
                  f"{tr['naive_loss']}; {tr['teachers']}."]
        lines += ["", *render_train_vs_hf(res)]
    return "\n".join(lines) + "\n"


def render_train_vs_hf(res: dict[str, Any]) -> list[str]:
    """Training: ours against HF Trainer with group_by_length + dynamic padding, the naive one beside."""
    tr, t, s = res["train"], res["targets"], res["settings"]
    mem = "peak allocated" if res["environment"]["cuda"] else "peak RSS"
    pct = ", ".join(f"{k} {v:.0f}" for k, v in tr["token_percentiles"].items())
    hf, o, nv = tr["hf_group"], tr["ours"], tr["naive"]
    eff = tr["padding_efficiency"]
    return [
        "### Training against HF Trainer (group_by_length + dynamic padding)", "",
        f"Rows: {tr['rows']} ({tr['source']}); tokens per row {pct}; {100 * tr['cut_fraction']:.0f}% at max_length "
        f"{s['max_length']}. Micro-batch {s['train_batch']}, one optimizer step per micro-batch in every path.", "",
        "| measure | ours | HF Trainer group_by_length | naive (max_length pad) | ours / HF | target | met |",
        "|---|---|---|---|---|---|---|",
        f"| real tokens/s | {o['real_tokens_per_s']:.0f} | {hf['real_tokens_per_s']:.0f} | {nv['real_tokens_per_s']:.0f} | "
        f"{tr['real_tokens_per_s_ratio_vs_hf_group']:.2f}x | >= {TARGETS['train_tokens_per_s_vs_hf_group']:.1f}x | "
        f"{_mark(t['train_tokens_per_s_vs_hf_group'])} |",
        f"| padding efficiency (real / padded tokens) | {eff['ours']:.3f} | {eff['hf_group']:.3f} | {eff['naive']:.3f} | "
        f"| >= {TARGETS['train_padding_efficiency']} | {_mark(t['train_padding_efficiency'])} |",
        f"| real tokens per CPU second (steadier under load) | {o['real_tokens_per_cpu_s']:.0f} | "
        f"{hf['real_tokens_per_cpu_s']:.0f} | {nv['real_tokens_per_cpu_s']:.0f} | "
        f"{tr['real_tokens_per_cpu_s_ratio_vs_hf_group']:.2f}x | | |",
        f"| seconds per pass (CPU seconds) | {o['seconds']:.2f} ({o['cpu_seconds']:.1f}) | {hf['seconds']:.2f} "
        f"({hf['cpu_seconds']:.1f}) | {nv['seconds']:.2f} ({nv['cpu_seconds']:.1f}) | | | |",
        f"| {mem} (GiB), + over the run's start | {_gib(o['peak_bytes'])} (+{_gib(o['delta_bytes'])}) | "
        f"{_gib(hf['peak_bytes'])} (+{_gib(hf['delta_bytes'])}) | {_gib(nv['peak_bytes'])} (+{_gib(nv['delta_bytes'])}) "
        f"| {o['delta_bytes'] / max(hf['delta_bytes'], 1):.2f}x | added <= HF | {_mark(t['train_memory_vs_hf_group'])} |",
        "", f"Batch plans alone (Kaggle-like lengths, micro-batch {s['train_batch']}): padding efficiency", "",
        "| max_length | rows | cut | ours | HF group_by_length | random order, dynamic pad | max_length pad |",
        "|---|---|---|---|---|---|---|",
        *(f"| {v['max_length']} | {v['rows']:,} | {100 * v['cut_fraction']:.0f}% | {v['ours']:.3f} | {v['hf_group']:.3f} | "
          f"{v['random_dynamic']:.3f} | {v['max_length_pad']:.3f} |" for v in tr["plan_padding"].values())]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    s = parse_args(argv)
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    import transformers

    env = {"device": torch.cuda.get_device_name(0) if CUDA else f"CPU ({platform.processor() or platform.machine()})",
           "cuda": CUDA, "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
           "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "loadavg_start": loadavg()}
    t_all = time.perf_counter()
    test, train, source, corpus = load_frames(s)
    base, info = build_or_load_model(s, corpus)
    tok = load_tokenizer(base)
    kw = encode_kwargs(s)
    enc = encode_batch_detailed(tok, test["prompt"].tolist(), test["response_a"].tolist(), test["response_b"].tolist(),
                                **kw)
    lengths = np.asarray(enc.lengths)
    res: dict[str, Any] = {"settings": dataclasses.asdict(s), "environment": env,
                           "data": {"source": source, "pred_rows": len(test), "train_rows": len(train),
                                    "token_percentiles": {f"p{q}": float(np.percentile(lengths, q))
                                                          for q in (10, 50, 90, 99, 100)}
                                    | {"mean": float(lengths.mean())},
                                    "truncated_fraction": float(np.mean(enc.token_truncated))},
                           "model": {"folder": str(base), **{k: info.get(k) for k in ("vocab_size", "params")}}}
    log(f"preset {s.preset}: {len(test)} prediction rows, {len(train)} training rows, max_length {s.max_length}, "
        f"model {base.name}, device {env['device']}, {env['threads']} threads, load {env['loadavg_start']}")
    if "predict" not in s.skip:
        res["predict"] = bench_predict(s, base, test)
        res["model"].update({k: res["predict"][k] for k in ("non_embedding_params", "dtype", "attn_implementation")})
        res["flops"] = flops_extras(res["predict"], s)
    if "train" not in s.skip:
        res["train"] = bench_train(s, base, train)
    if "non_embedding_params" not in res["model"]:
        m = load_classifier(base, dtype=s.dtype, pad_token_id=tok.pad_token_id)
        res["model"].update(non_embedding_params=non_embedding_params(m), dtype=str(next(m.parameters()).dtype),
                            attn_implementation=getattr(m.config, "_attn_implementation", None))
    targets: dict[str, bool] = {}
    if "predict" in res:
        targets["predict_rows_per_s_ratio"] = res["predict"]["rows_per_s_ratio"] >= TARGETS["predict_rows_per_s_ratio"]
        targets["predict_padding_efficiency"] = (res["predict"]["padding_efficiency"]["ours"]
                                                 >= TARGETS["predict_padding_efficiency"])
    if "train" in res:
        tr = res["train"]
        targets["train_tokens_per_s_ratio"] = tr["real_tokens_per_s_ratio"] >= TARGETS["train_tokens_per_s_ratio"]
        targets["train_tokens_per_s_vs_hf_group"] = (tr["real_tokens_per_s_ratio_vs_hf_group"]
                                                     >= TARGETS["train_tokens_per_s_vs_hf_group"])
        targets["train_padding_efficiency"] = tr["padding_efficiency"]["ours"] >= TARGETS["train_padding_efficiency"]
        # memory the run adds over its start (all three models live in the one process, so the absolute peak
        # is shared); a 5% margin absorbs allocator noise
        targets["train_memory_vs_hf_group"] = (tr["ours"]["delta_bytes"]
                                               <= 1.05 * TARGETS["train_memory_vs_hf_group"] * tr["hf_group"]["delta_bytes"])
    res["targets"] = targets
    env["loadavg_end"] = loadavg()
    env["total_seconds"] = round(time.perf_counter() - t_all, 1)
    table = render(res)
    out_dir = Path(s.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{s.name}.md").write_text(table, encoding="utf-8")
    (out_dir / f"{s.name}.json").write_text(json.dumps(res, indent=1, default=float) + "\n", encoding="utf-8")
    log(f"done in {env['total_seconds']} s -> {out_dir / s.name}.md, .json")
    print(table, flush=True)
    return res


if __name__ == "__main__":
    main()
