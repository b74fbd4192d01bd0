"""Shared test fixtures: offline environment, repository root, and the three tiny models built once.

``tiny_model_dirs`` gives ``{"tiny_llama": Path, "tiny_qwen2": Path, "tiny_gemma2": Path}``: real
Llama / Qwen2 / Gemma2 architectures (hidden 64, 2 layers) with their own byte-level BPE tokenizers
(family-style specials and chat templates, see ``arena_distill.tiny``), built once per test session
in a few seconds. Each folder loads with ``AutoTokenizer``, ``AutoModelForCausalLM`` and
``AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)``.

Differences from stage 1's default build, for speed: small vocabularies (1,000-1,500) and tiny_qwen2
uses a Qwen2-style BPE instead of the real 151k Qwen2 vocabulary (whose LM head makes a causal-LM step
~50x slower); ``tests/test_tiny_models.py`` covers the real-vocabulary build separately.
Tests must treat these folders as read-only (they are shared by the whole session).
"""
from __future__ import annotations

import os

# Before anything imports transformers/tokenizers: no hub access, no tokenizer thread pools that
# deadlock after fork, and quiet progress bars.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Idle OpenMP threads sleep instead of spinning: when test subprocesses share the 2 cores, spinning made
# a 2-thread forward ~60x slower (measured by the benchmark, docs/benchmarks.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Small sizes: every tiny-model test step stays well under a second on 2 cores.
TEST_SPECS: dict[str, dict] = {
    "tiny_llama": {"arch": "llama", "tokenizer": "bpe", "vocab_size": 1500, "hidden_size": 64,
                   "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
                   "max_position_embeddings": 2048},
    "tiny_qwen2": {"arch": "qwen2", "tokenizer": "bpe", "vocab_size": 1200, "hidden_size": 64,
                   "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
                   "max_position_embeddings": 2048},
    "tiny_gemma2": {"arch": "gemma2", "tokenizer": "bpe", "vocab_size": 1000, "hidden_size": 64,
                    "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
                    "max_position_embeddings": 2048},
}
TEST_SEED = 2025


def tianchi_paths(root: Path = REPO_ROOT) -> list[Path]:
    """The real Tianchi logic files: in the repo (``data/tianchi_logic``), else ``../shared``."""
    for base in (root / "data" / "tianchi_logic", root.parent / "shared" / "data" / "tianchi_logic"):
        paths = [base / "round1_train_data.jsonl", base / "round1_test_data.jsonl"]
        if all(p.is_file() for p in paths):
            return paths
    return []


def synthetic_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """English chat-like sentences (with code, numbers, emoji) so the BPE learns some English merges."""
    rng = random.Random(seed)
    subjects = ["The model", "My assistant", "This answer", "The user", "A response", "The first reply"]
    verbs = ["explains", "compares", "summarises", "ignores", "translates", "answers"]
    objects = ["the question about Python lists", "a recipe for pancakes", "the history of Rome",
               "why the sky is blue", "the proof of the theorem", "a short poem about cats 🐱"]
    extras = ["", " Thanks!", " 👍", " See `print(x)` for details.", " It costs $12.50.", " 中文也可以。"]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} in {rng.randint(1, 999)} words."
            f"{rng.choice(extras)}" for _ in range(n)]


def tiny_test_corpus(root: Path = REPO_ROOT) -> list[str]:
    from arena_distill.tiny import iter_corpus

    paths = tianchi_paths(root)[:1]  # the train file alone (~0.2 M chars) keeps BPE training ~1 s
    return synthetic_sentences() + list(iter_corpus(paths))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def load_stage(filename: str) -> ModuleType:
    """Import a stage script (``"01_build_tiny_models"`` or ``"01_build_tiny_models.py"``) from ``src/``.

    Stage files start with digits, so they cannot be imported by name. The module is registered in
    ``sys.modules`` before it runs: dataclasses with ``from __future__ import annotations`` look their
    module up there and fail with ``'NoneType' object has no attribute '__dict__'`` otherwise.
    """
    path = REPO_ROOT / "src" / (filename if filename.endswith(".py") else f"{filename}.py")
    name = "stage_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def stage_module():
    """``stage_module("04_train_teacher")`` -> the imported stage script (call its ``main(argv)``)."""
    return load_stage


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session temp folder holding ``tiny_llama/``, ``tiny_qwen2/``, ``tiny_gemma2/`` (each with DONE.json)."""
    from arena_distill.tiny import build_all_tiny

    root = tmp_path_factory.mktemp("model_path")
    build_all_tiny(root, tiny_test_corpus(), TEST_SPECS, seed=TEST_SEED)
    return root


@pytest.fixture(scope="session")
def tiny_model_dirs(tiny_models_root: Path) -> dict[str, Path]:
    """``{"tiny_llama": Path, "tiny_qwen2": Path, "tiny_gemma2": Path}``."""
    return {name: tiny_models_root / name for name in TEST_SPECS}


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dirs: dict[str, Path]):
    """``tiny_model_dir("tiny_llama") -> Path``."""
    def get(name: str) -> Path:
        if name not in tiny_model_dirs:
            raise KeyError(f"no tiny model {name!r}; known: {sorted(tiny_model_dirs)}")
        return tiny_model_dirs[name]
    return get
