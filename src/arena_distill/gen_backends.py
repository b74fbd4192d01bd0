"""One text-generation interface over three engines.

    backend = make_backend(opts)                 # opts: a GenOptions (stage configs inherit it)
    outs = backend.generate(prompts, n=1, temperature=0.7, max_new_tokens=512, seed=2025)
    outs[i][j]                                   # j-th sample (of n) for prompts[i], completion text only

| backend | engine | where |
|---|---|---|
| ``hf`` | transformers ``generate`` in-process, length-sorted batches, left padding | CPU default, tests, tiny profile; GPTQ 3-bit evaluation |
| ``vllm_offline`` | ``vllm.LLM.generate`` / ``LLM.chat`` (tensor parallel in-process) | batch runs on a GPU box |
| ``vllm_server`` | an OpenAI-compatible server (``vllm serve ...``) through the ``openai`` client, bounded thread concurrency, retries with exponential backoff on transport errors | how the seed answered with Llama-3.1-70B |
| ``auto`` | ``vllm_offline`` when CUDA and vLLM are present and vLLM can run the checkpoint (not GPTQ 3-bit: its kernels serve 4/8 bit), else ``hf`` | evaluation runs of merged / quantized models |

``chat_template=True`` sends each prompt as one user message (the tokenizer's chat template, or the
server's chat endpoint); ``False`` feeds the raw prompt (completions endpoint). vLLM is an optional GPU
dependency (``requirements-gpu.txt``), imported lazily.

Sampling: ``temperature == 0`` is greedy. Seeds: the hf backend seeds torch per batch (``seed`` + batch
index); vLLM gets ``seed + i * n`` for prompt i, so re-runs give the same texts on the same engine.
"""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from .config import field
from .dist import print0, warn0
from .readers import read_json

BackendName = Literal["hf", "vllm_offline", "vllm_server", "auto"]
VLLM_MISSING = ("vLLM is not installed in this environment. It is an optional GPU dependency that pins its own "
                "torch/transformers: run it as a server from its own venv (requirements-vllm.txt, `vllm serve`, "
                "docs/gpu.md) with backend=vllm_server, or use backend=hf.")


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 512,
                 seed: int = 0, top_p: float = 1.0) -> list[list[str]]:
        ...


# GenOptions keys that say how a backend is reached and how fast it runs, not what it generates: left out
# of a stage's settings fingerprint (io.fingerprint), so moving a server or raising concurrency is no "change".
GEN_TRANSPORT_KEYS = ("server_url", "api_key", "concurrency", "max_retries", "retry_backoff_s", "request_timeout_s",
                      "batch_size", "gpu_memory_utilization", "max_num_seqs", "tensor_parallel_size")


@dataclass
class GenOptions:
    """Backend settings shared by the stages that generate (stage configs inherit these fields)."""

    backend: str = field("hf", help="hf | vllm_offline | vllm_server | auto (see gen_backends docstring)")
    model: str = field("", help="model folder name under model_dir, or a path (hf, vllm_offline, auto); "
                                "vllm_server uses served_model_name instead")
    model_dir: str = field("model_path", help="folder holding base checkpoints (common key)")
    chat_template: bool = field(True, help="wrap each prompt as one user turn with the tokenizer's chat template "
                                           "(server: chat endpoint); false = raw prompt / completions endpoint")
    dtype: str = field("auto", help="auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32")
    batch_size: int = field(8, help="hf: prompts per generate() call (x n samples)")
    top_p: float = field(1.0, help="nucleus sampling")
    cpu_threads: int = field(0, help="hf on CPU: torch threads (0 = torch's default); 1 is ~20x faster for tiny "
                                     "models on a shared 2-core box, where 2 threads oversubscribe")
    # vLLM offline
    tensor_parallel_size: int = field(1, help="vllm_offline: GPUs per model (8 for a 70B in bf16 on A100-80GB)")
    gpu_memory_utilization: float = field(0.9, help="vllm_offline: share of GPU memory vLLM may take")
    max_model_len: int = field(8192, help="vllm_offline: context length (prompt + completion)")
    max_num_seqs: int = field(256, help="vllm_offline: concurrent sequences")
    # vLLM server
    server_url: str = field("http://localhost:8000/v1", help="vllm_server: OpenAI-compatible base URL")
    served_model_name: str = field("", help="vllm_server: model name on the server; empty = the first one listed")
    api_key: str = field("", help="vllm_server: API key; empty = $VLLM_API_KEY when set (what run_reasoning.sh's "
                                  "server requires then), else 'EMPTY' (vLLM ignores it unless started with a key). "
                                  "Prefer the environment: a key given here is saved in the run's config.yaml")
    concurrency: int = field(8, help="vllm_server: requests in flight (the seed used 8 threads)")
    max_retries: int = field(6, help="vllm_server: retries per request on transport errors / 5xx")
    retry_backoff_s: float = field(2.0, help="vllm_server: first retry delay; doubles each retry (+ jitter), max 60 s")
    request_timeout_s: float = field(900.0, help="vllm_server: per-request timeout")


def resolve_model_path(model: str, model_dir: str) -> Path:
    """``model`` as a folder path if it holds a config.json, else ``model_dir/model``."""
    p = Path(model)
    if (p / "config.json").is_file():
        return p
    q = Path(model_dir) / model
    if (q / "config.json").is_file():
        return q
    from .io import StageInputError

    raise StageInputError(f"model {model!r} not found (looked for {p}/config.json and {q}/config.json)"
                          f" -> for the tiny profile run first: python src/01_build_tiny_models.py")


def quant_bits(model_path: str | os.PathLike) -> int | None:
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file():
        return None
    q = read_json(cfg).get("quantization_config")
    return int(q.get("bits")) if isinstance(q, dict) and q.get("bits") else None


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def server_api_key(configured: str = "") -> str:
    """The key the server client sends: the configured one, else ``$VLLM_API_KEY`` (the variable ``vllm serve``
    itself reads), else the OpenAI client's placeholder ``EMPTY``."""
    return configured or os.environ.get("VLLM_API_KEY") or "EMPTY"


def vllm_version_problem() -> str | None:
    """Why the installed vLLM cannot run in-process beside this environment's torch / transformers, or None.

    vllm 0.33 requires torch 2.14 and transformers < 5.21 while we pin 2.13 / 5.23: installed into our
    venv it silently swaps both. Its own declared requirements are checked against what is installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("vllm") or []
    except metadata.PackageNotFoundError:
        return VLLM_MISSING
    problems = []
    for line in requires:
        req = Requirement(line)
        if req.name not in ("torch", "transformers") or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        have = metadata.version(req.name)
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"vllm {metadata.version('vllm')} needs {req.name}{req.specifier}, this venv has {have}")
    if not problems:
        return None
    return ("; ".join(problems) + ": the in-process vllm_offline backend cannot run here. Run vLLM from its own "
            "venv (requirements-vllm.txt) as `vllm serve` and use backend=vllm_server (docs/gpu.md)")


def auto_backend(*, cuda: bool, vllm_problem: str | None, bits: int | None, model_bytes: int,
                 gpu_bytes: int) -> str:
    """``backend=auto``: vllm_offline where it can run the checkpoint (4/8-bit or unquantized), else hf; but
    never an unquantized model larger than one GPU through transformers (it would be spread over the GPUs
    layer by layer, one at a time: days for an evaluation), which is refused with what to do instead."""
    if cuda and vllm_problem is None and bits in (None, 4, 8):
        return "vllm_offline"
    if cuda and bits is None and model_bytes > gpu_bytes:
        raise RuntimeError(
            f"backend=auto: the unquantized model ({model_bytes / 2**30:.0f} GiB) is larger than one GPU "
            f"({gpu_bytes / 2**30:.0f} GiB) and in-process vLLM is not usable "
            f"({(vllm_problem or 'n/a').split(':')[0]}); refusing to run it through transformers. Serve it with "
            "`vllm serve ... --tensor-parallel-size N` from the vLLM venv and set backend=vllm_server, or "
            "evaluate a quantized copy (docs/gpu.md)")
    return "hf"


def _checkpoint_bytes(path: Path) -> int:
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def make_backend(opts: GenOptions) -> Backend:
    name = opts.backend
    if name == "auto":
        import torch

        path = resolve_model_path(opts.model, opts.model_dir)
        bits = quant_bits(path)
        cuda = torch.cuda.is_available()
        problem = vllm_version_problem() if vllm_available() else VLLM_MISSING
        name = auto_backend(cuda=cuda, vllm_problem=problem, bits=bits, model_bytes=_checkpoint_bytes(path),
                            gpu_bytes=torch.cuda.get_device_properties(0).total_memory if cuda else 0)
        print0(f"backend auto -> {name} (cuda={cuda}, vllm={'ok' if problem is None else 'no'}, gptq bits={bits})")
    if name == "hf":
        return HFBackend(resolve_model_path(opts.model, opts.model_dir), chat_template=opts.chat_template,
                         batch_size=opts.batch_size, dtype=opts.dtype, cpu_threads=opts.cpu_threads)
    if name == "vllm_offline":
        return VLLMOfflineBackend(resolve_model_path(opts.model, opts.model_dir), chat_template=opts.chat_template,
                                  tensor_parallel_size=opts.tensor_parallel_size,
                                  gpu_memory_utilization=opts.gpu_memory_utilization,
                                  max_model_len=opts.max_model_len, max_num_seqs=opts.max_num_seqs, dtype=opts.dtype)
    if name == "vllm_server":
        return VLLMServerBackend(opts.server_url, model=opts.served_model_name, chat=opts.chat_template,
                                 api_key=server_api_key(opts.api_key), concurrency=opts.concurrency, max_retries=opts.max_retries,
                                 backoff_s=opts.retry_backoff_s, timeout_s=opts.request_timeout_s)
    raise ValueError(f"unknown backend {name!r} (expected hf, vllm_offline, vllm_server or auto)")


# --------------------------------------------------------------------------------------------------
# transformers, in-process

class HFBackend:
    """``model.generate`` over length-sorted batches with left padding (the batch's prompts end together)."""

    name = "hf"

    def __init__(self, model_path: str | os.PathLike, *, chat_template: bool = True, batch_size: int = 8,
                 dtype: str = "auto", model: Any = None, tokenizer: Any = None, cpu_threads: int = 0):
        import torch

        from .models import load_causal_lm, load_tokenizer

        if cpu_threads > 0 and not torch.cuda.is_available():
            torch.set_num_threads(cpu_threads)

        self.path = Path(model_path)
        self.tok = tokenizer or load_tokenizer(self.path, padding_side="left")
        self.tok.padding_side = "left"
        self.chat_template = chat_template
        if chat_template and not getattr(self.tok, "chat_template", None):
            raise ValueError(f"{self.path}: tokenizer has no chat template; set chat_template=false")
        self.batch_size = batch_size
        if model is None:
            kwargs: dict[str, Any] = {}
            if quant_bits(self.path):
                # GPTQ checkpoints load through transformers' GPTQ integration (GPTQModel kernels), with a
                # kernel that needs no compiler or download (quant.load_gptq); 3-bit has no vLLM kernel.
                from .dist import pick_device
                from .quant import load_gptq

                kwargs["device_map"] = "cuda:0" if torch.cuda.is_available() else "cpu"
                gptq_dtype = torch.float16 if torch.cuda.is_available() else torch.float32
                model = load_gptq(self.path, task="CAUSAL_LM", dtype=gptq_dtype, device=pick_device())
            else:
                model = load_causal_lm(self.path, dtype=dtype, **kwargs)
            if "device_map" not in kwargs:
                from .dist import pick_device

                model.to(pick_device())
        self.model = model.eval()

    def encode(self, prompt: str) -> list[int]:
        if self.chat_template:
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok(prompt)["input_ids"]

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 512,
                 seed: int = 0, top_p: float = 1.0) -> list[list[str]]:
        import torch
        from tqdm import tqdm

        from .batching import collate, sorted_batches

        encoded = [self.encode(p) for p in prompts]
        out: list[list[str]] = [[] for _ in prompts]
        batches = sorted_batches([len(e) for e in encoded], self.batch_size)
        device = next(self.model.parameters()).device
        eos = self.model.generation_config.eos_token_id
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_return_sequences": n,
                                      "pad_token_id": self.tok.pad_token_id,
                                      "eos_token_id": eos if eos is not None else self.tok.eos_token_id}
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            if n > 1:
                warn0("temperature 0 with n > 1: greedy decoding gives n identical samples")
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        for bi, idx in enumerate(tqdm(batches, desc="generate", disable=len(batches) < 2)):
            ids, mask = collate([encoded[i] for i in idx], self.tok.pad_token_id, padding_side="left")
            torch.manual_seed(seed + bi)
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
            new = gen[:, ids.shape[1]:].cpu()
            texts = self.tok.batch_decode(new, skip_special_tokens=True)
            for k, i in enumerate(idx):
                out[int(i)] = texts[k * n:(k + 1) * n]
        return out


# --------------------------------------------------------------------------------------------------
# vLLM offline (GPU)

class VLLMOfflineBackend:
    name = "vllm_offline"

    def __init__(self, model_path: str | os.PathLike, *, chat_template: bool = True, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int = 8192, max_num_seqs: int = 256,
                 dtype: str = "auto"):
        problem = vllm_version_problem() if vllm_available() else VLLM_MISSING
        if problem:
            raise RuntimeError(problem)
        from vllm import LLM
        vllm_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
        self.chat_template = chat_template
        self.llm = LLM(model=str(model_path), tensor_parallel_size=tensor_parallel_size, dtype=vllm_dtype,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       max_num_seqs=max_num_seqs)

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 512,
                 seed: int = 0, top_p: float = 1.0) -> list[list[str]]:
        from vllm import SamplingParams

        # seed + i * n: vLLM seeds sample j of a request with seed + j, so requests get disjoint streams
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                 max_tokens=max_new_tokens, seed=seed + i * n) for i in range(len(prompts))]
        if self.chat_template:
            results = self.llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
        else:
            results = self.llm.generate(prompts, params)
        return [[o.text for o in r.outputs] for r in results]


# --------------------------------------------------------------------------------------------------
# vLLM OpenAI-compatible server

def _is_transient(exc: BaseException) -> bool:
    """Transport problems and server-side errors are retried; request errors (4xx) are not."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                        openai.InternalServerError)):
        return True
    return isinstance(exc, openai.APIStatusError) and getattr(exc, "status_code", 0) >= 500


class VLLMServerBackend:
    """Requests go out on ``concurrency`` threads; each asks for all ``n`` samples of one prompt."""

    name = "vllm_server"

    def __init__(self, base_url: str, *, model: str = "", chat: bool = True, api_key: str = "EMPTY",
                 concurrency: int = 8, max_retries: int = 6, backoff_s: float = 2.0, timeout_s: float = 900.0,
                 client: Any = None, sleep=time.sleep):
        if client is None:
            from openai import OpenAI

            # the client's own retries are off: ours log, back off exponentially and count
            client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.client = client
        self.base_url = base_url
        self.chat = chat
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.n_retries = 0
        self._model = model

    @property
    def model(self) -> str:
        if not self._model:
            models = self._with_retries(lambda: self.client.models.list(), what="list models")
            names = [m.id for m in models.data]
            if not names:
                raise RuntimeError(f"{self.base_url}: the server lists no models")
            self._model = names[0]
        return self._model

    def _with_retries(self, call, what: str):
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - filtered by _is_transient
                if not _is_transient(exc) or attempt == self.max_retries:
                    if _is_transient(exc):
                        warn0(f"{what}: giving up after {self.max_retries} retries; is the server at {self.base_url} "
                              f"up? (start it with `vllm serve ...`, see src/20_logic_answer.py)")
                    raise
                delay = min(60.0, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)
                self.n_retries += 1
                warn0(f"{what}: {type(exc).__name__}: {exc} - retry {attempt + 1}/{self.max_retries} in {delay:.1f}s")
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _one(self, prompt: str, n: int, temperature: float, max_new_tokens: int, seed: int, top_p: float) -> list[str]:
        model = self.model
        kwargs = {"model": model, "n": n, "temperature": temperature, "max_tokens": max_new_tokens, "seed": seed,
                  "top_p": top_p if temperature > 0 else 1.0}
        if self.chat:
            resp = self._with_retries(lambda: self.client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **kwargs), what="chat completion")
            choices = sorted(resp.choices, key=lambda c: c.index)
            return [c.message.content or "" for c in choices]
        resp = self._with_retries(lambda: self.client.completions.create(prompt=prompt, **kwargs), what="completion")
        return [c.text or "" for c in sorted(resp.choices, key=lambda c: c.index)]

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 512,
                 seed: int = 0, top_p: float = 1.0) -> list[list[str]]:
        from tqdm import tqdm

        _ = self.model  # resolve the served name once, before the threads start
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            # seed + i * n: vLLM seeds sample j of a request with seed + j; keep requests' streams disjoint
            futures = [pool.submit(self._one, p, n, temperature, max_new_tokens, seed + i * n, top_p)
                       for i, p in enumerate(prompts)]
            return [f.result() for f in tqdm(futures, desc="requests", disable=len(futures) < 2)]
