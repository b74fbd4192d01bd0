"""The reasoning stages 20-25 through their real entry points on temp dirs: the self-reflection retry loop with a
scripted backend, the evaluator's counts and answer file, the response-only SFT mask, SFT resume, the merge
equality, GPTQ calibration windows, and both shipped profiles' logic_* sections."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from arena_distill import config as C
from arena_distill.io import mark_done, read_jsonl
from arena_distill.logic_text import prompt_for, read_logic_data

from conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
PROBLEMS = [
    {"problem": "甲比乙高，乙比丙高。", "questions": [
        {"question": "选择题 1：\n谁最高？", "options": ["甲", "乙", "丙", "无法确定"], "answer": "A"},
        {"question": "选择题 2：\n谁最矮？", "options": ["甲", "丙"], "answer": "B"}], "id": "t_000"},
    {"problem": "所有的猫都是动物。", "questions": [
        {"question": "选择题 1：\n汤姆是猫，汤姆是动物吗？", "options": ["是", "否"], "answer": "A"},
        {"question": "选择题 2：\n动物都是猫吗？", "options": ["是", "否", "不确定"], "answer": "B"},
        {"question": "选择题 3：\n猫会飞吗？", "options": ["会", "不会"], "answer": "B"}], "id": "t_001"},
]


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROBLEMS), encoding="utf-8")
    return path


def answers_run(logic_dir: Path, data_file: Path, outputs: dict[tuple[str, int], str], name: str = "answer_train",
                backend_cfg: dict | None = None) -> Path:
    """A finished stage-20 run folder (generations + config.yaml + DONE) with the given attempt-0 outputs."""
    run = logic_dir / name
    run.mkdir(parents=True)
    rows = []
    for p in read_logic_data(data_file).problems:
        for qid, q in enumerate(p.questions):
            rows.append({"id": p.id, "qid": qid, "attempt": 0, "prompt": prompt_for(p, q),
                         "output": outputs.get((p.id, qid), ""), "pred": None, "answer": q.answer})
    (run / "generations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (run / "config.yaml").write_text(yaml.safe_dump({"data_file": str(data_file), "problems": "",
                                                     "config": {"backend": "hf", "max_new_tokens": 16,
                                                                **(backend_cfg or {})}}))
    mark_done(run)
    return run


# --------------------------------------------------------------------------------------- self-reflection
class ScriptedBackend:
    """Answers prompt p correctly on its k-th ask (``right_on[p]``; None = never), wrongly before."""

    name = "scripted"

    def __init__(self, right_on: dict[str, int | None], gold: dict[str, str], wrong: dict[str, str]):
        self.right_on, self.gold, self.wrong = right_on, gold, wrong
        self.asks: dict[str, int] = defaultdict(int)
        self.batches: list[int] = []

    def generate(self, prompts, n=1, temperature=0.0, max_new_tokens=16, seed=0, top_p=1.0):
        assert n == 1 and temperature > 0
        self.batches.append(len(prompts))
        out = []
        for p in prompts:
            self.asks[p] += 1
            letter = self.gold[p] if self.asks[p] == self.right_on[p] else self.wrong[p]
            out.append([f"推理……\n因此答案是：{letter}"])
        return out


def test_retry_loop_recovers_on_the_kth_try(stage_module):
    reflect = stage_module("21_logic_reflect")
    ks = {"p0": 1, "p1": 3, "p2": 6, "p3": 7, "p4": None}   # max_tries 6: p3 and p4 are never recovered
    items = [{"id": p, "qid": 0, "prompt": p, "answer": "B", "letters": "AB"} for p in ks]
    backend = ScriptedBackend(ks, gold={p: "B" for p in ks}, wrong={p: "A" for p in ks})
    recovered, rows = reflect.self_reflect(items, backend, max_tries=6, temperature=0.7, max_new_tokens=8, seed=1)
    assert {k[0]: r["attempt"] for k, r in recovered.items()} == {"p0": 1, "p1": 3, "p2": 6}
    assert backend.batches == [5, 4, 4, 3, 3, 3]          # only unresolved questions are re-asked
    assert len(rows) == sum(backend.batches) and all(r["pred"] in ("A", "B") for r in rows)
    assert all(recovered[(p, 0)]["output"].endswith("答案是：B") for p in ("p0", "p1", "p2"))


def test_retry_loop_resumes_from_saved_tries(stage_module):
    reflect = stage_module("21_logic_reflect")
    ks = {"p0": 2, "p1": 1}
    items = [{"id": p, "qid": 0, "prompt": p, "answer": "B", "letters": "AB"} for p in ks]
    saved = {}
    first = ScriptedBackend(ks, {p: "B" for p in ks}, {p: "A" for p in ks})
    reflect.self_reflect(items, first, max_tries=1, temperature=0.7, max_new_tokens=8, seed=1,
                         save_try=lambda t, rows: saved.__setitem__(t, rows))
    second = ScriptedBackend({"p0": 1, "p1": 1}, {p: "B" for p in ks}, {p: "A" for p in ks})
    recovered, _ = reflect.self_reflect(items, second, max_tries=3, temperature=0.7, max_new_tokens=8, seed=1,
                                        load_try=lambda t: saved.get(t))
    assert second.batches == [1]                           # try 1 came from disk; only p0 asked again, in try 2
    assert {k[0]: r["attempt"] for k, r in recovered.items()} == {"p1": 1, "p0": 2}


def test_reflect_stage_report_and_sft_data(stage_module, data_file, tmp_path, monkeypatch):
    reflect = stage_module("21_logic_reflect")
    logic = tmp_path / "logic"
    # first pass: t_000/0 right, t_001/0 right; t_000/1 wrong, t_001/1 unanswered, t_001/2 wrong
    answers_run(logic, data_file, {("t_000", 0): "因此答案是：A", ("t_000", 1): "因此答案是：A",
                                   ("t_001", 0): "答案是：A", ("t_001", 1): "I don't know",
                                   ("t_001", 2): "因此答案是：A"})
    data = read_logic_data(data_file).problems
    prompts = {(p.id, i): prompt_for(p, q) for p in data for i, q in enumerate(p.questions)}
    ks = {prompts[("t_000", 1)]: 2, prompts[("t_001", 1)]: 1, prompts[("t_001", 2)]: None}
    backend = ScriptedBackend(ks, gold={prompts[("t_000", 1)]: "B", prompts[("t_001", 1)]: "B",
                                        prompts[("t_001", 2)]: "B"}, wrong={p: "A" for p in ks})
    monkeypatch.setattr(reflect, "make_backend", lambda opts: backend)
    argv = ["--config", TINY, f"logic_dir={logic}", "max_tries=3", "temperature=0.7", "sft_source=recovered",
            "min_sft_rows=0"]
    report = reflect.main(argv)
    assert (report["n_questions"], report["first_pass_correct"], report["recovered"], report["never_recovered"]) == \
        (5, 2, 2, 1)
    assert report["first_pass_accuracy"] == pytest.approx(0.4)
    assert report["recovered_by_try"] == {"1": 1, "2": 1, "3": 0}
    assert backend.batches == [3, 2, 1]
    sft = json.loads((logic / "reflect" / "sft.json").read_text())
    assert [list(r) for r in sft] == [["instruction", "input", "output"]] * 2
    assert [r["instruction"] for r in sft] == [prompts[("t_000", 1)], prompts[("t_001", 1)]]  # data order
    assert all(r["output"].endswith("因此答案是：B") and r["input"] == "" for r in sft)
    traces = read_jsonl(logic / "reflect" / "traces.jsonl")
    assert sorted(t["origin"] for t in traces) == ["first_pass", "first_pass", "recovered", "recovered"]
    assert len(list((logic / "reflect" / "tries").glob("try_*.jsonl"))) == 3
    # idempotent: a second run is a no-op; all_correct + min_sft_rows on a fresh folder label the padding
    assert reflect.main(argv)["skipped"] is True
    fresh = ScriptedBackend(ks, gold=backend.gold, wrong=backend.wrong)
    monkeypatch.setattr(reflect, "make_backend", lambda opts: fresh)
    report = reflect.main(argv + ["out_name=reflect2", "sft_source=all_correct", "min_sft_rows=5"])
    assert report["sft_rows_by_origin"] == {"first_pass": 2, "recovered": 2, "gold_template": 1}
    gold_rows = [t for t in read_jsonl(logic / "reflect2" / "traces.jsonl") if t["origin"] == "gold_template"]
    assert [(t["id"], t["qid"], t["output"]) for t in gold_rows] == [("t_001", 2, "因此答案是：B")]


# ------------------------------------------------------------------------------------------------ stage 20
def test_answer_stage_writes_generations(stage_module, data_file, tmp_path, tiny_models_root):
    answer = stage_module("20_logic_answer")
    logic = tmp_path / "logic"
    argv = ["--config", TINY, f"logic_dir={logic}", f"train_file={data_file}", "train_problems=", "model=tiny_qwen2",
            f"model_dir={tiny_models_root}", "n=2", "max_new_tokens=4", "chunk_size=3", "cpu_threads=0"]
    summary = answer.main(argv)
    rows = read_jsonl(logic / "answer_train" / "generations.jsonl")
    assert summary["n_questions"] == 5 and len(rows) == 10
    assert [(r["id"], r["qid"], r["attempt"]) for r in rows[:4]] == [("t_000", 0, 0), ("t_000", 0, 1),
                                                                     ("t_000", 1, 0), ("t_000", 1, 1)]
    assert all(list(r) == ["id", "qid", "attempt", "prompt", "output", "pred", "answer", "tries"] for r in rows)
    assert rows[2]["answer"] == "B" and rows[2]["prompt"] == prompt_for(*_pq(data_file, 0, 1))
    saved = C.read_saved_config(logic / "answer_train" / "config.yaml")
    assert (saved["data_file"], saved["problems"]) == (str(data_file), "")
    assert answer.main(argv)["skipped"] is True
    # resume: a chunk already on disk is reused as is (here: doctored outputs survive)
    shutil.rmtree(logic / "answer_train")
    parts = logic / "answer_train" / "parts"
    parts.mkdir(parents=True)
    doctored = [{**r, "output": "因此答案是：A", "pred": "A"} for r in rows[:6]]
    (parts / "part_00000.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in doctored))
    answer.main(argv)
    again = read_jsonl(logic / "answer_train" / "generations.jsonl")
    assert again[:6] == doctored and len(again) == 10 and not parts.exists()


def _pq(data_file, pi, qi):
    p = read_logic_data(data_file).problems[pi]
    return p, p.questions[qi]


# ------------------------------------------------------------------------------------------------ stage 25
def test_evaluator_counts_and_answer_file(stage_module, data_file, tmp_path, capsys):
    evaluate = stage_module("25_logic_evaluate")
    gens = tmp_path / "recorded" / "generations.jsonl"
    gens.parent.mkdir()
    lines = [{"id": "t_000", "qid": 0, "attempt": 0, "output": "因此答案是：A"},            # right
             {"id": "t_000", "qid": 1, "attempt": 0, "output": "因此答案是：C"},            # C is not an option
             {"id": "t_001", "qid": 0, "attempt": 0, "output": "答案是：B\n因此答案是：A", "pred": "B"},  # right (last)
             {"id": "t_001", "qid": 1, "attempt": 0, "output": "因此答案是：C"},            # wrong
             # t_001/2 has no generation: counted as wrong
             {"id": "t_001", "qid": 0, "attempt": 1, "output": "因此答案是：B"},            # attempt 1: ignored
             {"id": "zzz", "qid": 0, "attempt": 0, "output": "因此答案是：A"}]              # not in the data
    gens.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    argv = ["--config", TINY, f"generations={gens}", f"data_file={data_file}", f"logic_dir={tmp_path / 'logic'}"]
    metrics = evaluate.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == {"n_questions": 5, "n_answered": 3, "n_correct": 2, "accuracy": 0.4}
    assert metrics["n_unmatched_generations"] == 1
    saved = json.loads((gens.parent / "eval" / "metrics.json").read_text())
    assert [(p["id"], p["n_correct"], p["n_answered"]) for p in saved["per_problem"]] == [("t_000", 1, 1),
                                                                                         ("t_001", 1, 2)]
    answers = read_jsonl(gens.parent / "eval" / "answer.jsonl")
    assert [[q.get("answer") for q in p["questions"]] for p in answers] == [["A", None], ["A", "C", None]]
    assert "answer" not in answers[0]["questions"][1] and answers[1]["id"] == "t_001"
    # done: not recomputed, the same line printed last
    evaluate.main(argv)
    assert capsys.readouterr().out.strip().splitlines()[-1] == last
    # majority vote over attempts 0 and 1 of t_001/0 (A vs B, tie -> the first, A)
    evaluate.main(argv + ["vote=majority"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_correct"] == 2


def test_evaluator_reads_the_run_config(stage_module, data_file, tmp_path, capsys):
    evaluate = stage_module("25_logic_evaluate")
    logic = tmp_path / "logic"
    answers_run(logic, data_file, {("t_000", 0): "因此答案是：A", ("t_001", 2): "因此答案是：B"}, name="eval_fp")
    evaluate.main(["--config", TINY, f"logic_dir={logic}", "run=eval_fp"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == \
        {"n_questions": 5, "n_answered": 2, "n_correct": 2, "accuracy": 0.4}
    assert "| eval_fp | eval | 5 | 2 | 2 | 0.4000 |" in (logic / "eval_table.md").read_text()


# ------------------------------------------------------------------------------------------------ stage 22
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2", "tiny_gemma2"])
def test_response_only_loss_mask(stage_module, tiny_model_dirs, name):
    sft = stage_module("22_logic_sft")
    from arena_distill.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dirs[name])
    output = "逐步分析：甲最高。\n因此答案是：A"
    ids, labels = sft.encode_example(tok, "题目：谁最高？", "", output, cutoff_len=512)
    n_prompt = next(i for i, l in enumerate(labels) if l != sft.IGNORE)
    assert all(l == sft.IGNORE for l in labels[:n_prompt]) and labels[n_prompt:] == ids[n_prompt:]
    prompt_text = tok.apply_chat_template([{"role": "user", "content": "题目：谁最高？"}], tokenize=False,
                                          add_generation_prompt=True)
    assert tok.decode(ids[:n_prompt]) == prompt_text                      # the masked part is exactly the prompt
    response = tok.decode(ids[n_prompt:])
    assert response.startswith(output) and len(response) > len(output)   # + the template's end-of-turn token(s)
    cut_ids, cut_labels = sft.encode_example(tok, "题目：谁最高？", "", output * 50, cutoff_len=n_prompt + 5)
    assert len(cut_ids) == n_prompt + 5 and cut_labels[:n_prompt] == [sft.IGNORE] * n_prompt
    assert sft.encode_example(tok, "长" * 600, "", output, cutoff_len=50) is None
    raw_ids, raw_labels = sft.encode_example(tok, "q", "extra", "因此答案是：B", 512, template="raw")
    assert raw_ids[-1] == tok.eos_token_id and raw_labels[-1] == tok.eos_token_id


def _sft_rows(tmp_path: Path, n: int = 12) -> Path:
    logic = tmp_path / "logic"
    (logic / "reflect").mkdir(parents=True)
    rows = [{"instruction": f"题目 {i}：谁最高？\nA. 甲\nB. 乙", "input": "", "output": f"分析 {i}。因此答案是：{'AB'[i % 2]}"}
            for i in range(n)]
    (logic / "reflect" / "sft.json").write_text(json.dumps(rows, ensure_ascii=False))
    mark_done(logic / "reflect")
    return logic


def test_sft_trains_and_resumes_like_an_uninterrupted_run(stage_module, tiny_models_root, tmp_path):
    sft = stage_module("22_logic_sft")
    logic = _sft_rows(tmp_path)
    base = ["--config", TINY, f"logic_dir={logic}", f"model_dir={tiny_models_root}", "base_model=tiny_llama",
            "max_steps=4", "global_batch=4", "micro_batch=2", "epochs=2", "eval_steps=2", "save_steps=1",
            "val_size=0.1", "cpu_threads=0"]
    full = sft.main(base + [f"save_dir={tmp_path / 'a'}"])
    part = sft.main(base + [f"save_dir={tmp_path / 'b'}", "stop_after=2"])
    assert part["stopped"] and part["step"] == 2
    resumed = sft.main(base + [f"save_dir={tmp_path / 'b'}"])
    log_a = read_jsonl(tmp_path / "a" / "logic_sft" / "log.jsonl")
    log_b = read_jsonl(tmp_path / "b" / "logic_sft" / "log.jsonl")
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], abs=1e-5)
    assert [r.get("eval_loss") for r in log_a] == pytest.approx([r.get("eval_loss") for r in log_b], abs=1e-5)
    assert full["n_valid"] == 1 and full["eval_loss_last"] == pytest.approx(resumed["eval_loss_last"], abs=1e-5)
    out = tmp_path / "a" / "logic_sft"
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json", "DONE.json", "config.yaml"} <= \
        {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    assert C.read_saved_config(out / "config.yaml")["base_model"] == str(tiny_models_root / "tiny_llama")


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_sft_loss_norm_first_step_matches_the_base_model(stage_module, tiny_models_root, tmp_path, norm):
    """One optimizer step over all rows (micro-batch 1, accumulation 5): the logged loss is the base model's
    response CE (LoRA starts as a no-op) under the chosen normalisation, from an independent forward pass."""
    from arena_distill.models import load_causal_lm, load_tokenizer

    sft = stage_module("22_logic_sft")
    logic = tmp_path / "logic"
    (logic / "reflect").mkdir(parents=True)
    rows = [{"instruction": f"题目 {i}：谁最高？", "input": "", "output": "分析。" * (1 + 6 * i) + "因此答案是：B"}
            for i in range(5)]
    (logic / "reflect" / "sft.json").write_text(json.dumps(rows, ensure_ascii=False))
    mark_done(logic / "reflect")
    res = sft.main(["--config", TINY, f"logic_dir={logic}", f"model_dir={tiny_models_root}", "base_model=tiny_llama",
                    "max_steps=1", "global_batch=5", "micro_batch=1", "epochs=1", "val_size=0", "save_steps=1",
                    f"loss_norm={norm}", f"save_dir={tmp_path / 'save'}"])
    logged = read_jsonl(tmp_path / "save" / "logic_sft" / "log.jsonl")[0]["loss"]
    base = tiny_models_root / "tiny_llama"
    tok, model = load_tokenizer(base), load_causal_lm(base, dtype="fp32")
    sums, counts = [], []
    with torch.no_grad():
        for r in rows:
            ids, labels = sft.encode_example(tok, r["instruction"], "", r["output"], 10240, "llama3_factory")
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
            picked = [float(-logp[t, labels[t + 1]]) for t in range(len(ids) - 1) if labels[t + 1] != sft.IGNORE]
            sums.append(sum(picked))
            counts.append(len(picked))
    assert len(set(counts)) == 5  # rows of different lengths: the two rules give different numbers
    want = (sum(s / c for s, c in zip(sums, counts)) / 5) if norm == "sequence" else sum(sums) / sum(counts)
    assert res["total_steps"] == 1 and logged == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------------------------------------ stage 23
def test_merge_equals_base_plus_adapter(stage_module, tiny_models_root, tmp_path):
    merge = stage_module("23_logic_merge")
    from arena_distill.models import add_lora, load_causal_lm, load_peft

    base_dir = tiny_models_root / "tiny_gemma2"
    adapter = tmp_path / "save" / "logic_sft"
    model = add_lora(load_causal_lm(base_dir, dtype="fp32"), r=4, alpha=8, dropout=0.0,
                     target_modules=["all-linear"], task="CAUSAL_LM")
    with torch.no_grad():  # a non-trivial adapter (B is zero at init)
        gen = torch.Generator().manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(adapter)
    (adapter / "config.yaml").write_text(yaml.safe_dump({"base_model": str(base_dir)}))
    mark_done(adapter)
    report = merge.main(["--config", TINY, f"save_dir={tmp_path / 'save'}", "atol=1e-5"])
    assert report["max_abs_logit_diff"] < 1e-5
    ids = torch.tensor([[2, 15, 27, 99, 300, 8, 41]])
    with torch.no_grad():
        ref = load_peft(load_causal_lm(base_dir, dtype="fp32"), adapter)(input_ids=ids).logits
        merged = load_causal_lm(tmp_path / "save" / "logic_merged", dtype="fp32")(input_ids=ids).logits
        plain = load_causal_lm(base_dir, dtype="fp32")(input_ids=ids).logits
    assert torch.allclose(merged, ref, atol=1e-5, rtol=0)
    assert (merged - plain).abs().max() > 1e-3                           # the adapter did change the model
    assert merge.main(["--config", TINY, f"save_dir={tmp_path / 'save'}"])["skipped"] is True


def test_merge_refuses_a_quantized_base(stage_module, tiny_models_root, tmp_path):
    merge = stage_module("23_logic_merge")
    from arena_distill.io import StageInputError

    base = tmp_path / "quantized_base"
    shutil.copytree(tiny_models_root / "tiny_llama", base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    adapter = tmp_path / "save" / "logic_sft"
    adapter.mkdir(parents=True)
    (adapter / "config.yaml").write_text(yaml.safe_dump({"base_model": str(base)}))
    mark_done(adapter)
    with pytest.raises(StageInputError, match="quantized checkpoint"):
        merge.main(["--config", TINY, f"save_dir={tmp_path / 'save'}"])


# ------------------------------------------------------------------------------------------------ stage 24
def test_calibration_windows(stage_module):
    quant = stage_module("24_logic_quantize")
    prompts = [list(range(100)), list(range(1000, 1010)), list(range(2000, 2300))]
    win = quant.calibration_windows(prompts, window=64, n_samples=50, seed=7)
    assert len(win) == 50 and all(len(w) == 64 for w in win)
    assert all(w[0] < 1000 or w[0] >= 2000 for w in win)                  # the 10-token prompt is never used
    assert all(w == list(range(w[0], w[0] + 64)) for w in win)           # contiguous slices
    assert all(w[0] <= 100 - 64 - 1 for w in win if w[0] < 1000)         # start in [0, len - window - 1]
    assert win == quant.calibration_windows(prompts, window=64, n_samples=50, seed=7)
    assert win != quant.calibration_windows(prompts, window=64, n_samples=50, seed=8)


# ---------------------------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("profile", ["tiny.yaml", "a100x8.yaml"])
def test_profiles_resolve_for_every_logic_stage(stage_module, profile):
    path = REPO_ROOT / "configs" / profile
    data = C.read_profile(path)
    for script, cls, section in [("20_logic_answer", "AnswerConfig", "logic_answer"),
                                 ("21_logic_reflect", "ReflectConfig", "logic_reflect"),
                                 ("22_logic_sft", "SFTConfig", "logic_sft"),
                                 ("23_logic_merge", "MergeConfig", "logic_merge"),
                                 ("24_logic_quantize", "QuantizeConfig", "logic_quantize")]:
        cfg = C.build_config(getattr(stage_module(script), cls), section, data, {}, source=str(path))
        assert cfg is not None
    ev = C.build_config(stage_module("25_logic_evaluate").EvaluateConfig, "logic_evaluate", data, {"run": "x"})
    assert ev.vote == "attempt"
    sft = C.build_config(stage_module("22_logic_sft").SFTConfig, "logic_sft", data, {})
    assert (sft.lora_r, sft.lora_alpha, sft.warmup_ratio) == (16, 32, 0.1)
    if profile == "a100x8.yaml":
        assert (sft.lr, sft.epochs, sft.cutoff_len, sft.quant, sft.val_size) == (5e-5, 10.0, 10240, "nf4", 0.01)
        assert data["logic_reflect"]["max_tries"] == 6 and data["logic_quantize"]["n_samples"] == 1024


# ------------------------------------------------------------------------------------ runbook, end to end
@pytest.mark.slow
def test_run_reasoning_tiny_end_to_end(tmp_path):
    """`CONFIG=configs/tiny.yaml sh run_reasoning.sh` on real problems into temp folders (~4 min on 2 cores),
    then again: every stage is skipped."""
    import os
    import subprocess

    dirs = [f"common.model_dir={tmp_path / 'model_path'}", f"common.save_dir={tmp_path / 'model_save'}",
            f"common.logic_dir={tmp_path / 'logic'}"]
    env = {**os.environ, "CONFIG": "configs/tiny.yaml", "FORCE": "0"}
    run = subprocess.run(["sh", "run_reasoning.sh", *dirs], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    logic, save = tmp_path / "logic", tmp_path / "model_save"
    for d in [logic / "answer_train", logic / "reflect", save / "logic_sft", save / "logic_merged",
              save / "logic_gptq_4bit", save / "logic_gptq_3bit", tmp_path / "model_path" / "tiny_llama",
              *(logic / r / "eval" for r in ("eval_base", "eval_merged", "eval_gptq_4bit", "eval_gptq_3bit",
                                             "test_logic_gptq_4bit"))]:
        assert (d / "DONE.json").is_file(), d
    report = json.loads((logic / "reflect" / "report.json").read_text())
    assert report["n_questions"] == 52 and report["sft_rows"] >= 24
    assert report["first_pass_correct"] + report["recovered"] + report["never_recovered"] == 52
    metrics = json.loads((save / "logic_sft" / "metrics.json").read_text())
    assert metrics["train_loss_last"] < metrics["train_loss_first"] and metrics["eval_loss_last"] is not None
    for r in ("eval_base", "eval_merged", "eval_gptq_4bit", "eval_gptq_3bit"):
        m = json.loads((logic / r / "eval" / "metrics.json").read_text())
        assert m["n_questions"] == 57 and m["accuracy"] == m["n_correct"] / 57
    answers = read_jsonl(logic / "test_logic_gptq_4bit" / "eval" / "answer.jsonl")
    assert len(answers) == 10 and all(set(q) <= {"question", "options", "answer"} for p in answers
                                      for q in p["questions"])
    assert "eval_gptq_3bit" in (logic / "eval_table.md").read_text()
    again = subprocess.run(["sh", "run_reasoning.sh", *dirs], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    for stage in ("logic_answer", "logic_reflect", "logic_sft", "logic_merge", "logic_quantize", "logic_evaluate"):
        lines = [line for line in out.splitlines() if f"[{stage}]" in line]
        assert lines and all("skipping" in line or "is done" in line for line in lines), (stage, lines)
    assert "build tiny model" not in again.stdout
