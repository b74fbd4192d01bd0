"""Stage 2: parse the Kaggle CSVs, assign folds once, and tokenize per model family with the seed's template.

Launch (from the repository root; one CPU process, no GPU needed):

    python src/02_prepare_data.py --config configs/tiny.yaml
    python src/02_prepare_data.py --config configs/a100x8.yaml truncation_side=left force=true
    CONFIG=configs/tiny.yaml sh run_data.sh          # stages 0-2

Reads (config section `prepare`, plus `common`):
    train_csv (default `<data_dir>/train.csv`)      Kaggle schema, JSON-encoded turn lists
    extra_33k_csv / extra_ut_csv (optional inputs)  same columns as train.csv; `use_33k`, `use_ut`; a
                                                    missing file is a warning and a line in the report
    Any of the three may be another public format (`format`, `extra_33k_format`, `extra_ut_format`; `auto` =
    from the columns): Arena battles (chatbot_arena_conversations, arena-human-preference-55k/100k/140k; JSONL
    or parquet), generic chosen/rejected pairs (`column_map`), UltraFeedback rows (-> the UT set; `ut_pairs`);
    `both_bad=tie|drop`. See arena_distill/importers.py; rows in/out and drops by reason go to the report,
    string ids get integers (<processed_dir>/<source>_id_map.csv, <source>_import.json).
    `<model_dir>/<NAME>/` tokenizer for each NAME in `teachers` + `student` (or `models`)

Writes:
    folds_csv (default `data/folds.csv`)            id,fold for every train row; written once, reused
                                                    when it matches the ids, an error when it does not
    <processed_dir>/<NAME>fold<k>/{train,dev}.parquet  columns id, swap, label, input_ids, length, source
                                                    (docs/architecture.md); dev = held-out rows only,
                                                    original orientation; train = the other folds (+ A/B
                                                    swapped copies) + 33k rows (+ UT rows if ut_in_folds)
    <processed_dir>/<NAME>_ut/train.parquet         the UT rows, for post-pretraining
    <processed_dir>/report.{json,md}                rows in/out, repairs by kind, fold class counts,
                                                    token length percentiles, truncation rates (printed)
Each output folder is built under a temporary name and renamed into place with config.yaml and DONE.json.

Bad input stops the stage before anything is written, with an error naming the file, the row id and
the column: a missing column, a non-integer or duplicate id, a label row that is not one-hot (NaN, not
0/1, not summing to 1), and a non-JSON text cell when bad_json=error. Documented repairs are counted in
the report (see arena_distill/arena_text.py: null turns, [null] cells, lone surrogates, non-JSON cells
with bad_json=repair). Exact duplicate rows (same prompt and answers) are all kept and put in the same
fold, so a duplicate never sits on both sides of a split. Extra data as the seed (src/prepare_data.py:168-300,
src/prepare_data_ut.py:209-226): the 33k file is added whole (it is deduplicated upstream;
extra_prompt_filter=true drops its rows whose prompt is a train prompt, counted); UT rows are shuffled
(ut_shuffle_seed), rows with an id seen before are dropped (counted, not an error), and rows whose seed
text has ut_max_words words or more are dropped (counted). Extra rows get new ids (10**12 + row for 33k,
2 * 10**12 + row for UT) so that (id, swap) stays a unique key across sources.

Encoding (arena_text.encode_rows): BOS by the tokenizer's convention (bos=auto), seed word split
(word_split=seed), prompt capped only when the row does not fit (prompt_cap=seed); see docs/fidelity.md.

Resume/skip: a model whose output folders all have DONE.json made with the same settings is skipped;
force=true rebuilds. A done folder made with different settings is an error (re-run with force=true,
then re-run the stages downstream of it).
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from arena_distill import arena_text as at  # noqa: E402
from arena_distill import importers  # noqa: E402
from arena_distill.config import config_dict, field, load_config, save_config  # noqa: E402
from arena_distill.dist import print0, seed_everything, warn0  # noqa: E402
from arena_distill.io import (atomic_dir, atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text,  # noqa: E402
                              is_done, mark_done, read_done, require, run_stage, StageInputError)
from arena_distill.readers import check_tokenizer_folder, read_csv, read_json  # noqa: E402

EXTRA_ID_BASE = {"33k": 10**12, "ut": 2 * 10**12}
SCHEMA = pa.schema([("id", pa.int64()), ("swap", pa.bool_()), ("label", pa.int8()),
                    ("input_ids", pa.list_(pa.int32())), ("length", pa.int32()), ("source", pa.string())])


# --------------------------------------------------------------------------------------------------
# Config

@dataclass
class PrepareConfig:
    data_dir: str = field("data/lmsys-chatbot-arena", help="Kaggle files folder (common)")
    processed_dir: str = field("data/processed_data", help="output root for tokenized folds (common)")
    model_dir: str = field("model_path", help="tokenizers are loaded from <model_dir>/<NAME> (common)")
    teachers: list[str] = field([], help="teacher model names (common); tokenized with their own tokenizers")
    student: str = field("", help="student model name (common)")
    models: list[str] = field([], help="models to tokenize for; empty = teachers + student")
    seed: int = field(2025, help="fold assignment seed (common)")
    n_folds: int = field(5, help="number of CV folds (common)")
    train_csv: str = field("", help="Kaggle train.csv; empty = <data_dir>/train.csv")
    extra_33k_csv: str = field("", help="deduplicated 33k arena set (train columns); empty = <data_dir>/extra_33k.csv")
    extra_ut_csv: str = field("", help="UltraFeedback-derived UT set (train columns); empty = <data_dir>/extra_ut.csv")
    use_33k: bool = field(True, help="add the 33k rows to every fold's training side")
    use_ut: bool = field(True, help="write <NAME>_ut/train.parquet from the UT rows (post-pretraining)")
    ut_in_folds: bool = field(False, help="also add the UT rows to every fold's training side")
    folds_csv: str = field("data/folds.csv", help="id,fold file: written once, then read by every stage")
    max_length: int = field(1024, help="tokens per example including template and EOS (seed: 1024)")
    prompt_max_tokens: int = field(256, help="prompt token cap (seed: 256)")
    prompt_max_words: int = field(256, help="prompt word cap before tokenizing (seed: 256)")
    response_max_words: int = field(700, help="per-response word cap before tokenizing (seed: 700)")
    truncation_side: Literal["right", "left"] = field("right", help="right keeps each part's start (seed); "
                                                      "left keeps its end (reported as a large gain)")
    word_split: Literal["seed", "whitespace"] = field("seed", help="word caps count text.split(' ') pieces (seed) "
                                                      "or \\S+ runs (whitespace)")
    prompt_cap: Literal["seed", "always"] = field("seed", help="cap the prompt at prompt_max_tokens only when the "
                                                  "row does not fit max_length (seed), or in every row")
    bos: Literal["auto", "none"] = field("auto", help="start rows with the tokenizer's own BOS convention "
                                         "(auto: Gemma-2/Llama-3 yes, Qwen2 no) or never (none)")
    extra_prompt_filter: bool = field(False, help="drop 33k/UT rows whose prompt is a train prompt (the seed adds "
                                      "the whole pre-deduplicated 33k file: false)")
    ut_shuffle_seed: int = field(2023, help="UT rows are shuffled with this seed before duplicate ids are dropped "
                                 "(seed: 2023)")
    ut_max_words: int = field(1200, help="drop UT rows whose seed text has this many space-separated words or more "
                              "(seed: 1200; 0 = keep all)")
    swap_augment: bool = field(True, help="add an A/B-swapped copy of every training row (label 0<->1)")
    bad_json: Literal["error", "repair"] = field("repair", help="non-JSON text cell: error, or keep the raw "
                                                 "text as one turn (counted in the report)")
    format: str = field("auto", help="format of train_csv: auto|kaggle|arena_conversations|arena_55k|pairs|"
                                     "ultrafeedback (arena_distill/importers.py)")
    extra_33k_format: str = field("auto", help="format of extra_33k_csv (e.g. arena_conversations for the public 33k)")
    extra_ut_format: str = field("auto", help="format of extra_ut_csv (ultrafeedback: rated completions -> pairs)")
    both_bad: Literal["tie", "drop"] = field("tie", help="Arena 'tie (bothbad)' / 'both_bad': a tie (as Kaggle), "
                                             "or drop the row (counted)")
    ut_pairs: Literal["one", "all"] = field("one", help="ultrafeedback: one pair per prompt (the seed kept one row "
                                            "per prompt id) or every pair of rated completions")
    column_map: dict = field({}, help="rename input columns, e.g. {question: prompt, good: chosen, bad: rejected}")
    encoding: str = field("utf-8-sig", help="text encoding of the CSVs: UTF-8 (a byte-order mark dropped); set e.g. "
                                            "cp1252 for a file a spreadsheet saved (bytes are never replaced)")
    force: bool = field(False, help="rebuild outputs that are already done")

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")
        if self.max_length < 32:
            raise ValueError(f"max_length must be >= 32, got {self.max_length}")
        if not self.models:
            self.models = list(dict.fromkeys([*self.teachers, *([self.student] if self.student else [])]))
        if not self.models:
            raise ValueError("no models to tokenize for: set common.teachers/student or prepare.models")
        data = Path(self.data_dir)
        self.train_csv = self.train_csv or str(data / "train.csv")
        self.extra_33k_csv = self.extra_33k_csv or str(data / "extra_33k.csv")
        self.extra_ut_csv = self.extra_ut_csv or str(data / "extra_ut.csv")


# Settings that change the outputs: a done folder made with other values is stale.
FINGERPRINT_KEYS = ("seed", "n_folds", "train_csv", "extra_33k_csv", "extra_ut_csv", "use_33k", "use_ut",
                    "ut_in_folds", "max_length", "prompt_max_tokens", "prompt_max_words", "response_max_words",
                    "truncation_side", "swap_augment", "bad_json", "encoding", "word_split", "prompt_cap", "bos",
                    "extra_prompt_filter", "ut_shuffle_seed", "ut_max_words", "format", "extra_33k_format",
                    "extra_ut_format", "both_bad", "ut_pairs", "column_map")
# What a folder made before a key existed was built with: compared as such, so old data are stale, not reused.
# (Before the importers, every input was read as the Kaggle CSV: the defaults below read such files the same.)
LEGACY_FINGERPRINT = {"word_split": "whitespace", "prompt_cap": "always", "bos": "none",
                      "extra_prompt_filter": True, "ut_shuffle_seed": None, "ut_max_words": 0,
                      "format": "auto", "extra_33k_format": "auto", "extra_ut_format": "auto", "both_bad": "tie",
                      "ut_pairs": "one", "column_map": {}}


FINGERPRINT_FILE = "prepare_fingerprint.json"  # its own file: later stages may rewrite DONE.json/config.yaml


def _read_fingerprint(folder: Path) -> dict:
    path = folder / FINGERPRINT_FILE
    if not path.is_file():
        return {}
    return {**LEGACY_FINGERPRINT, **read_json(path, fix="re-run with force=true")}


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(PrepareConfig, "prepare", argv)
    seed_everything(cfg.seed, offset_by_rank=False)
    t_start = time.perf_counter()
    processed = Path(cfg.processed_dir)
    profile = cfg.__dict__.get("_profile_path", "configs/a100x8.yaml")
    fingerprint = {k: getattr(cfg, k) for k in FINGERPRINT_KEYS}

    # ----------------------------------------------------------------------------------------------
    # Inputs exist? (checked before any read or write)

    require(cfg.train_csv, f"python src/00_make_sample_data.py --config {profile}  (or place Kaggle's train.csv "
                           f"there; or set train_csv=...)", "train file")
    # Extra data are optional inputs: a missing file is a warning (and a line in the report), not an error.
    extra_missing = []
    for flag, path, off in ((cfg.use_33k, cfg.extra_33k_csv, "use_33k=false"),
                            (cfg.use_ut or cfg.ut_in_folds, cfg.extra_ut_csv, "use_ut=false ut_in_folds=false")):
        if flag and not Path(path).is_file():
            extra_missing.append(path)
            warn0(f"extra data {path} not found: continuing without it (place the file there, or pass "
                  f"{off} to silence this)")
    for name in cfg.models:
        require(Path(cfg.model_dir) / name / "tokenizer_config.json",
                f"python src/01_build_tiny_models.py --config {profile}  (tiny profile) or download the "
                f"checkpoint into {Path(cfg.model_dir) / name}", f"tokenizer of model '{name}'")

    # ----------------------------------------------------------------------------------------------
    # Parse and validate (ArenaParseError -> exit 1 before anything is written)

    repairs: dict[str, Counter] = {}
    sources: dict[str, pd.DataFrame] = {}
    paths = {"train": cfg.train_csv, "33k": cfg.extra_33k_csv if cfg.use_33k else None,
             "ut": cfg.extra_ut_csv if (cfg.use_ut or cfg.ut_in_folds) else None}
    paths = {src: p for src, p in paths.items() if p is not None and p not in extra_missing}
    formats = {"train": cfg.format, "33k": cfg.extra_33k_format, "ut": cfg.extra_ut_format}
    imports = {}
    for src, path in paths.items():
        repairs[src] = Counter()
        # UT ids may repeat: kept here and deduplicated below as the seed does (not an error for that source).
        sources[src], imports[src] = importers.read_preferences(
            path, format=formats[src], bad_json=cfg.bad_json, repairs=repairs[src], encoding=cfg.encoding,
            both_bad=cfg.both_bad, ut_pairs=cfg.ut_pairs, column_map=cfg.column_map, seed=cfg.seed,
            duplicate_ids="keep" if src == "ut" else "error")
        if len(sources[src]) == 0:
            raise StageInputError(f"{path}: no usable rows ({imports[src].as_dict()['dropped']} dropped)")
    train = sources["train"]
    rows_in = {src: len(df) for src, df in sources.items()}
    fingerprint["rows_in"] = rows_in  # which sources were used, and how many rows each had

    # Extra data as the seed: UT shuffled, repeated ids dropped (src/prepare_data_ut.py:209-215); 33k whole.
    # Optionally drop rows whose prompt is a train prompt (counted); then give new ids.
    train_prompts = set(train["prompt"])
    extra_dropped: dict[str, int] = {}
    if "ut" in sources:
        ut = sources["ut"].sample(frac=1.0, random_state=cfg.ut_shuffle_seed)
        extra_dropped["ut_duplicate_id"] = int(ut["id"].duplicated().sum())
        sources["ut"] = ut.drop_duplicates("id").reset_index(drop=True)
    for src in ("33k", "ut"):
        if src in sources:
            df = sources[src]
            df["id"] = EXTRA_ID_BASE[src] + np.arange(len(df), dtype=np.int64)
            if cfg.extra_prompt_filter:
                dup = df["prompt"].isin(train_prompts)
                extra_dropped[f"{src}_prompt_in_train"] = int(dup.sum())
                sources[src] = df[~dup].reset_index(drop=True)
    if int(train["id"].max()) >= EXTRA_ID_BASE["33k"]:
        raise StageInputError(f"{cfg.train_csv}: ids reach {int(train['id'].max())}, which collides with the "
                              f"extra-data id range starting at {EXTRA_ID_BASE['33k']}")

    # ----------------------------------------------------------------------------------------------
    # Folds: stratified by label, exact duplicates grouped, written once

    groups = pd.factorize(train["prompt"] + "\x00" + train["response_a"] + "\x00" + train["response_b"])[0]
    folds_path = Path(cfg.folds_csv)
    if folds_path.exists():
        folds = read_csv(folds_path, fix=f"delete {folds_path} and re-run this stage")
        if list(folds.columns) != ["id", "fold"]:
            raise StageInputError(f"{folds_path}: expected columns ['id', 'fold'], got {list(folds.columns)}")
        missing = set(train["id"]) - set(folds["id"])
        extra = set(folds["id"]) - set(train["id"])
        if missing or extra or folds["fold"].nunique() != cfg.n_folds or len(folds) != len(train):
            raise StageInputError(
                f"{folds_path} does not match {cfg.train_csv}: {len(missing)} train ids missing from it, "
                f"{len(extra)} ids not in train, {folds['fold'].nunique()} folds (config n_folds={cfg.n_folds}). "
                f"Folds are written once; if the train file or n_folds changed on purpose, delete {folds_path} "
                f"and every output made from it (processed data, models, logits), then re-run.")
        fold_of = dict(zip(folds["id"].tolist(), folds["fold"].tolist()))
        folds_reused = True
    else:
        from sklearn.model_selection import StratifiedGroupKFold

        if np.bincount(train["label"], minlength=3).min() < cfg.n_folds:
            raise StageInputError(f"{cfg.train_csv}: fewer than n_folds={cfg.n_folds} rows of some class; "
                                  f"class counts {np.bincount(train['label'], minlength=3).tolist()}")
        splitter = StratifiedGroupKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.seed)
        fold_arr = np.zeros(len(train), dtype=np.int64)
        for k, (_, dev_idx) in enumerate(splitter.split(np.zeros(len(train)), train["label"], groups)):
            fold_arr[dev_idx] = k
        fold_of = dict(zip(train["id"].tolist(), fold_arr.tolist()))
        folds_reused = False
    train["fold"] = train["id"].map(fold_of).astype(np.int64)
    if not folds_reused:
        atomic_write_csv(folds_path, train[["id", "fold"]])
    print0(f"folds: {'reused' if folds_reused else 'written'} {folds_path} ({cfg.n_folds} folds, {len(train)} rows)")

    # ----------------------------------------------------------------------------------------------
    # Tokenize each model once for all rows, then split per fold

    fold_source = [df.assign(source=src) for src, df in sources.items()
                   if src == "train" or (src == "33k") or (src == "ut" and cfg.ut_in_folds)]
    model_stats: dict[str, Any] = {}
    for name in cfg.models:
        outs = [processed / f"{name}fold{k}" for k in range(cfg.n_folds)]
        write_ut = cfg.use_ut and "ut" in sources
        if write_ut:
            outs.append(processed / f"{name}_ut")
        done = [o for o in outs if is_done(o)]
        new = json.loads(json.dumps(fingerprint))  # as stored (JSON types)
        # Keys an older version did not record are not compared (an upgrade alone is not "stale").
        stale = [o for o in done if any(_read_fingerprint(o).get(k, v) != v for k, v in new.items())]
        if stale and not cfg.force:
            old = _read_fingerprint(stale[0])
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k, v) != v}
            raise StageInputError(f"{stale[0]} was made with other settings {diff} (old, new); pass force=true to "
                                  f"rebuild it, then re-run the stages downstream of it")
        if len(done) == len(outs) and not cfg.force:
            print0(f"[{name}] already done ({len(outs)} folders); force=true to rebuild")
            model_stats[name] = read_done(outs[0]).get("stats", {})
            continue

        from transformers import AutoTokenizer

        t0 = time.perf_counter()
        check_tokenizer_folder(Path(cfg.model_dir) / name)  # a corrupt tokenizer file: named, exit 2
        tok = AutoTokenizer.from_pretrained(str(Path(cfg.model_dir) / name))
        data = pd.concat(fold_source + ([sources["ut"].assign(source="ut")] if write_ut and not cfg.ut_in_folds
                                        else []), ignore_index=True)
        try:
            orig, swapped = at.encode_batch_both(
                tok, data["prompt"].tolist(), data["response_a"].tolist(), data["response_b"].tolist(),
                max_length=cfg.max_length, prompt_max_tokens=cfg.prompt_max_tokens,
                prompt_max_words=cfg.prompt_max_words, response_max_words=cfg.response_max_words,
                truncation_side=cfg.truncation_side, word_split=cfg.word_split, prompt_cap=cfg.prompt_cap,
                bos=cfg.bos)
        except ValueError as exc:
            raise StageInputError(f"tokenizer of model '{name}' ({Path(cfg.model_dir) / name}): {exc}") from None
        seconds = time.perf_counter() - t0
        assert int(orig.lengths.max(initial=0)) <= cfg.max_length and int(swapped.lengths.max(initial=0)) <= cfg.max_length

        def table(mask: np.ndarray, with_swap: bool) -> pa.Table:
            """Rows ``mask`` in original orientation, then (optionally) their swapped copies."""
            idx = np.flatnonzero(mask)
            parts = [(orig, idx, False, data["label"].to_numpy()[idx])]
            if with_swap:
                parts.append((swapped, idx, True, at.swap_label(data["label"].to_numpy()[idx])))
            cols: dict[str, list] = {"id": [], "swap": [], "label": [], "input_ids": [], "length": [], "source": []}
            for enc, ix, sw, labels in parts:
                cols["id"].append(data["id"].to_numpy()[ix])
                cols["swap"].append(np.full(len(ix), sw))
                cols["label"].append(labels.astype(np.int8))
                cols["input_ids"].extend(enc.input_ids[i] for i in ix)
                cols["length"].append(enc.lengths[ix])
                cols["source"].append(data["source"].to_numpy()[ix])
            arrays = {k: (v if k == "input_ids" else np.concatenate(v) if v else []) for k, v in cols.items()}
            return pa.table({k: pa.array(arrays[k], type=SCHEMA.field(k).type) for k in SCHEMA.names}, schema=SCHEMA)

        def write_folder(out: Path, tables: dict[str, pa.Table], **info: Any) -> None:
            with atomic_dir(out) as tmp:
                for split, tbl in tables.items():
                    with atomic_path(tmp / f"{split}.parquet") as p:
                        pq.write_table(tbl, p)
                save_config(cfg, tmp, model=name)
                atomic_write_json(tmp / FINGERPRINT_FILE, fingerprint)
                mark_done(tmp, rows={s: t.num_rows for s, t in tables.items()}, **info)

        # UT rows of ut_max_words words or more are dropped as the seed (src/prepare_data_ut.py:222-226), which
        # counts text.split(' ') of its indented template text after truncation: 28 words + the spaces of the
        # three truncated parts (our decoded row holds the parts plus 3 template spaces).
        is_ut = (data["source"] == "ut").to_numpy()
        keep = np.ones(len(data), dtype=bool)
        if cfg.ut_max_words and is_ut.any():
            ut_idx = np.flatnonzero(is_ut)
            texts = tok.batch_decode([orig.input_ids[i] for i in ut_idx])
            words = np.array([t.count(" ") - 3 + 28 for t in texts])
            keep[ut_idx[words >= cfg.ut_max_words]] = False
            extra_dropped[f"ut_long_{name}"] = int((~keep).sum())  # per tokenizer
        is_train = (data["source"] == "train").to_numpy()
        fold = data["fold"].to_numpy()
        in_folds = keep & data["source"].isin(["train", "33k"] + (["ut"] if cfg.ut_in_folds else [])).to_numpy()
        stats = {
            "tokenize_seconds": round(seconds, 2),
            "length_percentiles": at.percentiles(orig.lengths[is_train]),
            "text_truncated_rate": round(float(orig.text_truncated[is_train].mean()), 4),
            "token_truncated_rate": round(float(orig.token_truncated[is_train].mean()), 4),
            "raw_token_percentiles": at.percentiles(orig.n_tokens_raw[is_train]),
            "at_max_length_rate": round(float((orig.lengths[is_train] == cfg.max_length).mean()), 4),
        }
        for k in range(cfg.n_folds):
            dev = is_train & (fold == k)
            trn = in_folds & ~dev
            write_folder(processed / f"{name}fold{k}",
                         {"train": table(trn, cfg.swap_augment), "dev": table(dev, False)}, fold=k, stats=stats)
        if write_ut:
            write_folder(processed / f"{name}_ut", {"train": table(is_ut & keep, cfg.swap_augment)}, stats=stats)
        model_stats[name] = stats
        print0(f"[{name}] tokenized {len(data)} rows x 2 orientations in {seconds:.1f} s; length p50/p99/max "
               f"{stats['length_percentiles']['p50']:.0f}/{stats['length_percentiles']['p99']:.0f}/"
               f"{stats['length_percentiles']['p100']:.0f}; token-truncated {stats['token_truncated_rate']:.1%}")

    # ----------------------------------------------------------------------------------------------
    # Report (every train row must come out in exactly one dev split: no row disappears)

    dev_counts = train.groupby("fold")["label"].value_counts().unstack(fill_value=0).reindex(
        columns=[0, 1, 2], fill_value=0)
    assert int(dev_counts.to_numpy().sum()) == len(train)
    n_dup_groups = int((pd.Series(groups).value_counts() > 1).sum())
    report = {
        "config": config_dict(cfg),
        "rows_in": rows_in,
        "rows_out": {"folds_dev_total": int(dev_counts.to_numpy().sum()),
                     "extra_used": {s: len(sources[s]) for s in ("33k", "ut") if s in sources},
                     "per_fold_train_rows": {k: int((train["fold"] != k).sum() * (2 if cfg.swap_augment else 1)
                                                    + sum(len(sources[s]) * (2 if cfg.swap_augment else 1)
                                                          for s in ("33k", "ut") if s in sources
                                                          and (s == "33k" or cfg.ut_in_folds)))
                                             for k in range(cfg.n_folds)}},
        "removed": extra_dropped,
        "extra_missing": extra_missing,
        "repairs": {s: dict(c) for s, c in repairs.items()},
        "imports": {s: r.as_dict() for s, r in imports.items()},
        "duplicates": {"exact_duplicate_groups": n_dup_groups,
                       "rows_in_duplicate_groups": int(pd.Series(groups).duplicated(keep=False).sum()),
                       "handling": "kept, each group in one fold"},
        "folds": {"path": str(folds_path), "reused": folds_reused,
                  "dev_class_counts": {int(k): [int(x) for x in row] for k, row in zip(dev_counts.index, dev_counts.to_numpy())}},
        "models": model_stats,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    md = [f"# Data report ({time.strftime('%Y-%m-%d %H:%M')})", "",
          f"- rows in: {rows_in}; every train row is in exactly one dev fold ({report['rows_out']['folds_dev_total']})",
          f"- extra rows used: {report['rows_out']['extra_used']}; dropped: {report['removed']}"
          + (f"; files not found: {extra_missing}" if extra_missing else ""),
          f"- repairs: {report['repairs']}",
          f"- exact duplicate groups: {n_dup_groups} (kept, each in one fold)",
          f"- folds: {report['folds']['path']} ({'reused' if folds_reused else 'written'})", "",
          "| fold | dev A | dev B | dev tie | train rows |", "|---|---|---|---|---|"]
    md += [f"| {k} | {row[0]} | {row[1]} | {row[2]} | {report['rows_out']['per_fold_train_rows'][k]} |"
           for k, row in zip(dev_counts.index, dev_counts.to_numpy())]
    md += ["", "| model | length p50 | p90 | p99 | max | raw tokens p99 | word/char-cut | token-cut | at max_length |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, s in model_stats.items():
        if s:
            lp = s["length_percentiles"]
            md.append(f"| {name} | {lp['p50']:.0f} | {lp['p90']:.0f} | {lp['p99']:.0f} | {lp['p100']:.0f} | "
                      f"{s['raw_token_percentiles']['p99']:.0f} | {s['text_truncated_rate']:.1%} | "
                      f"{s['token_truncated_rate']:.1%} | {s['at_max_length_rate']:.1%} |")
    md.append(f"\nmax_length {cfg.max_length}, truncation_side {cfg.truncation_side}, word_split {cfg.word_split}, "
              f"prompt_cap {cfg.prompt_cap}, bos {cfg.bos}, swap {cfg.swap_augment}; "
              f"{report['seconds']} s")
    for src, frame in sources.items():  # the id maps are saved with the import reports they belong to
        importers.save_import_outputs(processed, src, frame, imports[src])
    atomic_write_json(processed / "report.json", report)
    atomic_write_text(processed / "report.md", "\n".join(md) + "\n")
    print0("\n".join(md))
    return 0


if __name__ == "__main__":
    run_stage(main, at.ArenaParseError)
