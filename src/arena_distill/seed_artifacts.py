"""Load the seed's shipped artefacts (shyoulala/LMSYS_BlackPearl) into this project's formats.

The seed ships two things a user can start from instead of training the 70B teachers:

1. Fold training files ``data/processed_data/orgemma2fold<k>/{train,dev}.parquet``. Despite the name they
   are ``pickle.dump``-ed pandas DataFrames (seed src/prepare_data.py:324-327, src/merge_logits.py) with the
   template ``text``, the int ``label`` (0 A, 1 B, 2 tie; already swapped on ``reverse`` rows), ``id``,
   ``reverse``, ``order_index`` (+1,000,000 for the 33k rows) and the two teachers' raw logits: Qwen2-72B's in
   ``winner_model_a/b/tie`` and Llama-3-70B's in ``winner_model_a/b/tie_2`` (the seed's distillation reads
   them as ``grads[:, :3]`` / ``grads[:, 3:]``, src_fast/train_ce_model_nice_memory_grad_gemma2_double_16bit.py
   :225-230). ``convert_fold`` writes ``<processed_dir>/<student>fold<k>/`` in stage 2's schema plus one
   ``logits_<teacher>`` column per teacher, so stage 7 distils from them. The ids are the seed's encoding of
   ``text`` for the student (lines 222-223 of that script): ``tokenizer(text.replace(eos_token, "<end>"))``
   (whole string, BOS included), first 1,100 tokens, one EOS appended.
   Unpickling runs whatever code a file contains: it happens only with ``allow_pickle=true``, for files the
   user trusts; a real Parquet file is read as Parquet without it.

2. The post-pretrained LoRA ``adapter.bin``: ``torch.save`` of ``model.state_dict()`` filtered to keys
   containing ``lora`` or ``score`` (same script, lines 638-643), where the model is
   ``get_peft_model(AutoModelForSequenceClassification, LoraConfig(r=64, lora_alpha=128, task_type=CAUSAL_LM))``:
   keys ``base_model.model.model.layers.<i>.<block>.<proj>.lora_{A,B}.default.weight`` and
   ``base_model.model.score.weight``. ``convert_adapter`` writes a PEFT folder (``adapter_config.json`` +
   ``adapter_model.safetensors``, SEQ_CLS task, the score head as a module to save), by default
   ``<save_dir>/<student>_ut/``, where stage 7 starts from it (``init_from_post_pretrain``). It is read with
   ``torch.load(weights_only=True)``: tensors only, no code.

Launch (repository root):
    PYTHONPATH=src python -m arena_distill.seed_artifacts --config configs/a100x8.yaml fold=0 \
        seed_fold_dir=<seed>/data/processed_data/orgemma2fold0 allow_pickle=true
    PYTHONPATH=src python -m arena_distill.seed_artifacts --config configs/a100x8.yaml \
        seed_adapter=<seed>/model_save_or/v7_ut_gemma_v7_64r128_ddgemma2_16bit/epoch_0_model/adapter.bin
``src_fast/run_pipeline_fast.sh`` runs these when SEED_DATA / SEED_ADAPTER are set.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import config as C
from .io import StageInputError, atomic_dir, atomic_path, mark_done

SEED_MAX_TOKENS = 1100  # the seed's training scripts: tokenizer(text)['input_ids'][:1100]
SEED_33K_ORDER_BASE = 1_000_000  # src/prepare_data.py:300
LOGIT_SETS = ("", "_2")  # the seed's first (Qwen2-72B) and second (Llama-3-70B) teacher columns
SEED_LORA_DROPOUT = 0.05


# --------------------------------------------------------------------------------------------------
# 1. Fold files

def read_seed_frame(path: str | Path, *, allow_pickle: bool) -> Any:
    """A seed ``*.parquet``: real Parquet is read as such; a pickle only with ``allow_pickle``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"seed file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PAR1":
        return pd.read_parquet(path)
    if not head.startswith(b"\x80"):
        raise StageInputError(f"{path}: neither Parquet nor a pickle (starts with {head!r})")
    if not allow_pickle:
        raise StageInputError(f"{path} is a Python pickle (the seed's files are pickled DataFrames despite the "
                              f".parquet name). Loading a pickle runs code it contains: pass allow_pickle=true only "
                              f"for a file you trust (e.g. the seed's own release)")
    with open(path, "rb") as fh:
        frame = pickle.load(fh)  # allowed: explicit allow_pickle=true (tests/test_malformed.py ALLOWED)
    if not isinstance(frame, pd.DataFrame):
        raise StageInputError(f"{path}: the pickle holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame


def seed_text_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int = SEED_MAX_TOKENS) -> list[list[int]]:
    """The seed's training encoding of a template text: whole string (BOS included), EOS text replaced by
    ``<end>``, cut to ``max_tokens``, one EOS appended."""
    eos = tokenizer.eos_token
    enc = tokenizer([t.replace(eos, "<end>") for t in texts], verbose=False)["input_ids"] if len(texts) else []
    return [list(ids[:max_tokens]) + [tokenizer.eos_token_id] for ids in enc]


def seed_fold_table(frame: Any, tokenizer: Any, teachers: Sequence[str], *, file: str,
                    max_tokens: int = SEED_MAX_TOKENS) -> Any:
    """A seed fold DataFrame -> stage 2's columns (id, swap, label, input_ids, length, source) + logits_<t>.

    ``teachers[j]`` gets the seed's j-th logit set (``winner_*`` then ``winner_*_2``); [] = no logits (dev).
    """
    import pandas as pd

    missing = [c for c in ("text", "label") if c not in frame.columns]
    if len(teachers) > len(LOGIT_SETS):
        raise StageInputError(f"{file}: the seed's files hold {len(LOGIT_SETS)} teachers' logits, asked for {teachers}")
    for sfx in LOGIT_SETS[:len(teachers)]:
        missing += [c + sfx for c in ("winner_model_a", "winner_model_b", "winner_tie") if c + sfx not in frame.columns]
    if missing:
        raise StageInputError(f"{file}: missing column(s) {missing} (has {list(frame.columns)})")
    labels = pd.to_numeric(frame["label"], errors="coerce").to_numpy()
    bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise StageInputError(f"{file}: row {i}: label must be 0, 1 or 2, got {frame['label'].iloc[i]!r}")
    order = frame["order_index"].to_numpy(np.int64) if "order_index" in frame.columns else None
    ids = frame["id"].to_numpy(np.int64) if "id" in frame.columns else (
        order if order is not None else np.arange(len(frame), dtype=np.int64))
    source = (np.where(order >= SEED_33K_ORDER_BASE, "33k", "train") if order is not None
              else np.full(len(frame), "train"))
    swap = frame["reverse"].astype(bool).to_numpy() if "reverse" in frame.columns else np.zeros(len(frame), bool)
    texts = frame["text"].tolist()
    not_text = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_text:
        raise StageInputError(f"{file}: row {not_text[0]}: 'text' is {type(texts[not_text[0]]).__name__}, not text")
    input_ids = seed_text_ids(tokenizer, texts, max_tokens)
    out = pd.DataFrame({"id": ids, "swap": swap, "label": labels.astype(np.int8), "input_ids": input_ids,
                        "length": np.array([len(x) for x in input_ids], dtype=np.int32), "source": source})
    dup = out.duplicated(["source", "id", "swap"])
    if dup.any():
        raise StageInputError(f"{file}: {int(dup.sum())} rows repeat a (source, id, reverse) key, e.g. "
                              f"{out.loc[dup, ['source', 'id', 'swap']].head(3).to_dict('records')}")
    for name, sfx in zip(teachers, LOGIT_SETS):
        values = frame[[f"winner_model_a{sfx}", f"winner_model_b{sfx}", f"winner_tie{sfx}"]].to_numpy(np.float32)
        if not np.isfinite(values).all():
            raise StageInputError(f"{file}: teacher '{name}' (columns winner_*{sfx}): "
                                  f"{int((~np.isfinite(values)).any(axis=1).sum())} rows with NaN/inf logits")
        out[f"logits_{name}"] = list(values)
    return out


def convert_fold(seed_fold_dir: str | Path, out_dir: str | Path, tokenizer: Any, teachers: Sequence[str], *,
                 allow_pickle: bool, max_tokens: int = SEED_MAX_TOKENS, **info: Any) -> dict:
    """``<seed>/orgemma2fold<k>/{train,dev}.parquet`` -> a done stage-2-style fold folder with teacher logits."""
    seed_fold_dir, out_dir = Path(seed_fold_dir), Path(out_dir)
    train_file, dev_file = seed_fold_dir / "train.parquet", seed_fold_dir / "dev.parquet"
    train = seed_fold_table(read_seed_frame(train_file, allow_pickle=allow_pickle), tokenizer, teachers,
                            file=str(train_file), max_tokens=max_tokens)
    dev = seed_fold_table(read_seed_frame(dev_file, allow_pickle=allow_pickle), tokenizer, [],
                          file=str(dev_file), max_tokens=max_tokens)
    rows = {"train": len(train), "dev": len(dev)}
    with atomic_dir(out_dir) as tmp:
        for name, table in (("train", train), ("dev", dev)):
            with atomic_path(tmp / f"{name}.parquet") as p:
                table.to_parquet(p, index=False)
        mark_done(tmp, rows=rows, converted_from=str(seed_fold_dir), teachers=list(teachers),
                  encoding=f"seed training: tokenizer(text)[:{max_tokens}] + eos", **info)
    return rows


# --------------------------------------------------------------------------------------------------
# 2. The post-pretrained LoRA adapter.bin

def convert_adapter(adapter_bin: str | Path, out_dir: str | Path, *, lora_alpha: int | None = None,
                    base_model: str = "", **info: Any) -> dict:
    """The seed's raw LoRA state dict -> a PEFT SEQ_CLS adapter folder (``lora_alpha`` default: 2 r, the seed's
    64/128). Returns r, alpha, targets and tensor count."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    adapter_bin = Path(adapter_bin)
    if not adapter_bin.is_file():
        raise StageInputError(f"seed adapter not found: {adapter_bin}")
    try:
        state = torch.load(adapter_bin, map_location="cpu", weights_only=True)  # tensors only: no code runs
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one named error
        raise StageInputError(f"{adapter_bin}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not state:
        raise StageInputError(f"{adapter_bin}: expected a non-empty state dict, got {type(state).__name__}")
    converted: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    ranks: set[int] = set()
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            # base_model.model.<path>.<proj>.lora_A.<adapter>.weight -> base_model.model.<path>.<proj>.lora_A.weight
            head, kind, tail = key.partition(".lora_A." if ".lora_A." in key else ".lora_B.")
            if not head.startswith("base_model.model.") or not tail.endswith("weight"):
                raise StageInputError(f"{adapter_bin}: unexpected LoRA key {key!r}")
            converted[f"{head}{kind}weight"] = value.contiguous()
            targets.add(head.rsplit(".", 1)[-1])
            if kind == ".lora_A.":
                ranks.add(int(value.shape[0]))
        elif key.endswith("score.weight"):
            converted["base_model.model.score.weight"] = value.contiguous()
        else:
            raise StageInputError(f"{adapter_bin}: unexpected key {key!r} (expected LoRA A/B weights and the "
                                  f"score head)")
    if len(ranks) != 1:
        raise StageInputError(f"{adapter_bin}: LoRA ranks {sorted(ranks)}: expected one rank")
    r = ranks.pop()
    alpha = lora_alpha or 2 * r
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=SEED_LORA_DROPOUT, target_modules=sorted(targets),
                        bias="none", task_type="SEQ_CLS",
                        modules_to_save=["score"] if "base_model.model.score.weight" in converted else None,
                        base_model_name_or_path=base_model or None)
    with atomic_dir(out_dir) as tmp:
        config.save_pretrained(str(tmp))
        save_file(converted, str(tmp / "adapter_model.safetensors"))
        summary = {"r": r, "lora_alpha": alpha, "target_modules": sorted(targets), "tensors": len(converted)}
        mark_done(tmp, converted_from=str(adapter_bin), **summary, **info)
    return summary


# --------------------------------------------------------------------------------------------------
# Command line

@dataclasses.dataclass
class SeedArtifactsConfig:
    processed_dir: str = C.field("data/processed_data", help="where our fold data go (common)")
    model_dir: str = C.field("model_path", help="the student's tokenizer is <model_dir>/<student> (common)")
    save_dir: str = C.field("model_save", help="the converted adapter goes to <save_dir>/<student>_ut (common)")
    student: str = C.field("", help="student name (common)")
    teachers: list[str] = C.field([], help="profile teachers (common)")
    seed_teachers: list[str] = C.field([], help="teacher names for the seed's winner_* and winner_*_2 logit "
                                       "columns, in that order; [] = the qwen teacher, then the llama teacher")
    fold: int = C.field(0, help="fold number of seed_fold_dir")
    seed_fold_dir: str = C.field("", help="the seed's orgemma2fold<k> folder (train.parquet, dev.parquet)")
    allow_pickle: bool = C.field(False, help="the seed's fold files are pickles: load them only if you trust them")
    max_tokens: int = C.field(SEED_MAX_TOKENS, help="tokens kept of each text before the EOS (seed: 1100)")
    seed_adapter: str = C.field("", help="the seed's post-pretrained adapter.bin")
    lora_alpha: int = C.field(0, help="alpha of the seed adapter; 0 = 2 x r (the seed's 128 for r 64)")
    adapter_out: str = C.field("", help="converted adapter folder; empty = <save_dir>/<student>_ut")
    force: bool = C.field(False, help="convert again even if the output is done")

    def __post_init__(self) -> None:
        if not self.student:
            raise C.ConfigError("student= is required")
        if not self.seed_fold_dir and not self.seed_adapter:
            raise C.ConfigError("nothing to do: set seed_fold_dir=<seed>/orgemma2fold<k> and/or "
                                "seed_adapter=<adapter.bin>")
        if not self.seed_teachers:
            by_kind = [next((t for t in self.teachers if k in t.lower()), None) for k in ("qwen", "llama")]
            if None in by_kind:
                raise C.ConfigError(f"cannot tell which of teachers {self.teachers} is Qwen2 / Llama-3: set "
                                    f"seed_teachers=[<name of winner_* columns>,<name of winner_*_2 columns>]")
            self.seed_teachers = by_kind


def main(argv: list[str] | None = None) -> dict:
    from .io import is_done
    from .models import load_tokenizer, model_folder

    cfg = C.load_config(SeedArtifactsConfig, "seed_artifacts", argv)
    result: dict[str, Any] = {}
    if cfg.seed_fold_dir:
        out = Path(cfg.processed_dir) / f"{cfg.student}fold{cfg.fold}"
        if is_done(out) and not cfg.force:
            print(f"[seed_artifacts] {out} is done; skipping (force=true to convert again)")
        else:
            tok = load_tokenizer(model_folder(cfg.model_dir, cfg.student))
            result["fold"] = convert_fold(cfg.seed_fold_dir, out, tok, cfg.seed_teachers, allow_pickle=cfg.allow_pickle,
                                          max_tokens=cfg.max_tokens, fold=cfg.fold)
            print(f"[seed_artifacts] {cfg.seed_fold_dir} -> {out}: {result['fold']} rows, columns "
                  + ", ".join(f"logits_{t}" for t in cfg.seed_teachers))
    if cfg.seed_adapter:
        out = Path(cfg.adapter_out or Path(cfg.save_dir) / f"{cfg.student}_ut")
        if is_done(out) and not cfg.force:
            print(f"[seed_artifacts] {out} is done; skipping (force=true to convert again)")
        else:
            result["adapter"] = convert_adapter(cfg.seed_adapter, out, lora_alpha=cfg.lora_alpha or None,
                                                base_model=str(Path(cfg.model_dir) / cfg.student))
            print(f"[seed_artifacts] {cfg.seed_adapter} -> {out}: {json.dumps(result['adapter'])}")
    return result


if __name__ == "__main__":
    from .io import run_stage

    run_stage(main)
