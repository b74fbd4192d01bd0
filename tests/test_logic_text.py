"""Tianchi MCQ text: the seed prompt byte for byte, answer extraction on tricky outputs, data reading with
line-numbered errors / counted repairs, scoring and the competition answer file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena_distill.logic_text import (TEMPLATES, LogicDataError, answer_file_rows, choose_predictions, extract_answer,
                                      parse_slice, prompt_for, read_generations, read_logic_data, render_options,
                                      render_prompt, score, select_problems)

from conftest import tianchi_paths


def seed_prompt(problem: str, question: str, options: list[str]) -> str:
    """The seed's get_prompt(prompt_template=1, mode='infer'), copied verbatim (indents included)."""
    options = '\n'.join(f"{'ABCDEFG'[i]}. {o}" for i, o in enumerate(options))
    prompt = f"""你是一个逻辑推理专家，擅长解决逻辑推理问题。以下是一个逻辑推理的题目，形式为单项选择题。所有的问题都是（close-world assumption）闭世界假设，即未观测事实都为假。请逐步分析问题选择最正确的答案并在最后一行输出，最后一行的格式为"因此答案是：A"。题目如下：

        ### 题目:
        {problem}

        ### 问题:
        {question}
        {options}
        """
    return prompt


# ------------------------------------------------------------------------------------------------ prompt
def test_prompt_is_byte_identical_to_the_seed():
    problem, question, options = "有三个人：甲、乙、丙。\n规则：{x} 不是 {question}", "选择题 1：\n谁最高？", ["甲", "乙", "丙", "无法确定"]
    ours = render_prompt(problem, question, options, "seed_v1")
    assert ours == seed_prompt(problem, question, options)
    assert ours.encode("utf-8") == seed_prompt(problem, question, options).encode("utf-8")
    # only the first option line carries the 8-space indent; the template's last line is 8 spaces
    assert ours.endswith("\n        A. 甲\nB. 乙\nC. 丙\nD. 无法确定\n        ")
    assert ours.split("\n")[-1] == " " * 8  # the last line is 8 spaces
    assert "{x} 不是 {question}" in ours  # braces in the data stay literal


def test_prompt_matches_the_seed_on_every_real_question():
    paths = tianchi_paths()
    if not paths:
        pytest.skip("real Tianchi files not present")
    for path in paths:
        for p in read_logic_data(path).problems:
            for q in p.questions:
                assert prompt_for(p, q) == seed_prompt(p.problem, q.question, q.options)


def test_template_registry_and_options():
    assert render_options(["x", "y"]) == "A. x\nB. y"
    with pytest.raises(KeyError, match="unknown prompt template"):
        render_prompt("p", "q", ["a"], "v999")
    with pytest.raises(ValueError, match="at most 7"):
        render_options([str(i) for i in range(8)])
    assert "seed_v1" in TEMPLATES


# -------------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("output,n_options,expected", [
    ("分析……\n因此答案是：B", 4, "B"),
    ("首先答案是：A，但再想想。\n因此答案是：C", 4, "C"),                 # several markers: the last
    ("答案是:D", 4, "D"),                                              # ASCII colon
    ("答案是： , A", 2, "A"),                                           # full-width colon, spaces, comma
    ("答案是B", 2, "B"),                                               # no separator
    ("因此答案是：B\n……最后答案是：E", 4, "B"),                            # E is not an option: last valid one
    ("因此答案是：E", 4, None),                                          # only an invalid letter
    ("因此答案是：E", 5, "E"),
    ("The answer is B.", 4, None),                                     # English, no marker
    ("", 4, None),                                                     # empty
    ("答案是：\nA", 4, None),                                            # newline is not a separator
    ("答案是：a", 4, None),                                              # lower case is not a letter here
    ("答案是：H", 7, None),                                              # outside A-G entirely
    ("因此答案是：**B**", 4, None),                                      # markdown breaks the pattern (as the seed)
])
def test_extract_answer(output, n_options, expected):
    assert extract_answer(output, n_options) == expected


def test_extract_answer_letter_sets():
    text = "因此答案是：B\n答案是：F"
    assert extract_answer(text, "ABCD") == "B"
    assert extract_answer(text) == "F"  # None = any of A-G, the seed's default list
    assert extract_answer(None, 4) is None


# ------------------------------------------------------------------------------------------- data reading
def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"problem": "P", "questions": [{"question": "Q", "options": ["x", "y"], "answer": "B"}], "id": "p0"},
                  ensure_ascii=False)


def test_real_files_read():
    paths = tianchi_paths()
    if not paths:
        pytest.skip("real Tianchi files not present")
    train, test = (read_logic_data(p) for p in paths)
    assert (len(train.problems), train.n_questions, train.labelled) == (500, 1421, True)
    assert (len(test.problems), test.n_questions) == (500, 1328)
    assert all(q.answer is None for p in test.problems for q in p.questions)


SHIPPED_SHA256 = {  # data/tianchi_logic/README.md
    "round1_train_data.jsonl": "f2b51a9594a1f628418584dbcdb9ea137b68a47324d4040232ac38683c1142fd",
    "round1_train_data_fix.jsonl": "b9dbbd1eb9943c47212b8d660d7c922e8ad86353697f01557b9a5bee216170e0",
    "round1_test_data.jsonl": "ee769fbd4f2184fd7ecfd7536e1c8e71869e0343a3304f62adee9268d713b0a5",
}


def test_shipped_files_sha256(repo_root):
    import hashlib

    folder = repo_root / "data" / "tianchi_logic"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for name, digest in SHIPPED_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
        assert f"`{name}`" in readme and digest in readme


def test_corrected_train_file_read(repo_root):
    fix = read_logic_data(repo_root / "data" / "tianchi_logic" / "round1_train_data_fix.jsonl", require_answers=True)
    assert (len(fix.problems), fix.n_questions, fix.labelled) == (498, 1415, True)


@pytest.mark.parametrize("bad,message", [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({"problem": "P", "questions": [], "id": "x"}), "line 2 .*'questions' is empty"),
    (json.dumps({"problem": "P", "id": "x"}), "line 2: missing field 'questions'"),
    (json.dumps({"problem": "P", "questions": [{"question": "Q", "options": ["a", "b"], "answer": "C"}], "id": "x"}),
     "line 2 .*question 0: answer 'C' is not one of the options A, B"),
    (json.dumps({"problem": "P", "questions": [{"question": "Q", "options": "ab"}], "id": "x"}), "line 2 .*options"),
])
def test_bad_lines_name_the_line(tmp_path, bad, message):
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(LogicDataError, match=message):
        read_logic_data(path)


def test_counted_repair(tmp_path):
    bad_answer = json.dumps({"problem": "P", "questions": [{"question": "Q", "options": ["a", "b"], "answer": "Z"},
                                                           {"question": "Q2", "options": ["a", "b"], "answer": "A"}],
                             "id": "p1"})
    path = _write(tmp_path, [GOOD, "{oops", "", bad_answer])
    data = read_logic_data(path, on_error="skip")
    assert [p.id for p in data.problems] == ["p0", "p1"]
    assert len(data.skipped_lines) == 1 and "line 2" in data.skipped_lines[0]
    assert len(data.dropped_answers) == 1 and "line 4" in data.dropped_answers[0]
    assert [q.answer for q in data.problems[1].questions] == [None, "A"]
    assert data.report()["n_skipped_lines"] == 1


def test_duplicate_ids_refused(tmp_path):
    with pytest.raises(LogicDataError, match="duplicate problem id 'p0'"):
        read_logic_data(_write(tmp_path, [GOOD, GOOD]))


def test_slices():
    assert parse_slice("") == slice(None) and parse_slice("20:40") == slice(20, 40) and parse_slice(":5") == slice(None, 5)
    with pytest.raises(ValueError):
        parse_slice("5")


# -------------------------------------------------------------------------------------- scoring / writer
@pytest.fixture()
def fixture_data(tmp_path):
    problems = [
        {"problem": "P0", "questions": [{"question": "q0", "options": ["a", "b", "c", "d"], "answer": "A"},
                                        {"question": "q1", "options": ["a", "b"], "answer": "B"}], "id": "p0"},
        {"problem": "P1", "questions": [{"question": "q0", "options": ["a", "b", "c"], "answer": "C"},
                                        {"question": "q1", "options": ["a", "b", "c", "d"], "answer": "D"},
                                        {"question": "q2", "options": ["a", "b"], "answer": "A"}], "id": "p1"},
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems), encoding="utf-8")
    return read_logic_data(path)


def gen(pid, qid, output, attempt=0, pred="X"):
    return {"id": pid, "qid": qid, "attempt": attempt, "prompt": "", "output": output, "pred": pred, "answer": None}


def test_scoring_counts_missing_and_unanswered_as_wrong(fixture_data):
    gens = [gen("p0", 0, "因此答案是：A"),          # correct
            gen("p0", 1, "因此答案是：A"),          # wrong
            gen("p1", 0, "I think C"),            # no marker: unanswered, wrong
            gen("p1", 1, "答案是：D", pred="A"),    # correct (the stored pred is ignored)
            # p1/q2: no generation at all -> wrong
            gen("p9", 0, "因此答案是：A")]          # not in the data: counted, ignored
    preds, info = choose_predictions(fixture_data.problems, gens)
    m = score(fixture_data.problems, preds)
    assert (m["n_questions"], m["n_answered"], m["n_correct"]) == (5, 3, 2)
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert info["n_unmatched_generations"] == 1
    assert [(r["id"], r["n_questions"], r["n_answered"], r["n_correct"]) for r in m["per_problem"]] == \
        [("p0", 2, 2, 1), ("p1", 3, 1, 1)]
    assert m["per_problem"][1]["preds"] == [None, "D", None]


def test_attempt_selection_and_majority_vote(fixture_data):
    gens = [gen("p0", 0, "答案是：B", 0), gen("p0", 0, "答案是：A", 1), gen("p0", 0, "答案是：A", 2),
            gen("p0", 1, "答案是：A", 0), gen("p0", 1, "答案是：B", 1), gen("p0", 1, "none", 2),   # tie A/B -> A (first)
            gen("p1", 0, "x", 0), gen("p1", 0, "答案是：C", 1)]
    first, _ = choose_predictions(fixture_data.problems, gens)
    assert first[("p0", 0)] == "B" and first[("p1", 0)] is None
    second, _ = choose_predictions(fixture_data.problems, gens, attempt=1)
    assert second[("p0", 0)] == "A" and second[("p1", 0)] == "C"
    maj, _ = choose_predictions(fixture_data.problems, gens, vote="majority")
    assert maj[("p0", 0)] == "A" and maj[("p0", 1)] == "A" and maj[("p1", 0)] == "C" and maj[("p1", 2)] is None
    with pytest.raises(LogicDataError, match="duplicate generation"):
        choose_predictions(fixture_data.problems, gens + [gen("p0", 0, "x", 2)])


def test_valid_all_reproduces_the_seed_extract(fixture_data):
    gens = [gen("p0", 1, "答案是：B\n答案是：C")]  # p0/q1 has 2 options: C is not one of them
    assert choose_predictions(fixture_data.problems, gens)[0][("p0", 1)] == "B"
    assert choose_predictions(fixture_data.problems, gens, valid="all")[0][("p0", 1)] == "C"


def test_unlabelled_scores_have_no_accuracy(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"problem": "P", "questions": [{"question": "q", "options": ["a", "b"]}], "id": "t0"})
                    + "\n", encoding="utf-8")
    data = read_logic_data(path)
    m = score(data.problems, {("t0", 0): "A"})
    assert (m["n_questions"], m["n_answered"], m["n_correct"], m["accuracy"]) == (1, 1, None, None)


def test_answer_file_rows(fixture_data):
    preds = {("p0", 0): "C", ("p0", 1): None, ("p1", 0): "A", ("p1", 1): None, ("p1", 2): "B"}
    rows = answer_file_rows(fixture_data.problems, preds)
    assert [list(r) for r in rows] == [["problem", "questions", "id"]] * 2  # the input's key order
    assert rows[0]["questions"][0] == {"question": "q0", "options": ["a", "b", "c", "d"], "answer": "C"}
    assert "answer" not in rows[0]["questions"][1]  # no extracted answer: absent, gold never copied
    assert [q.get("answer") for q in rows[1]["questions"]] == ["A", None, "B"]
    assert fixture_data.problems[0].raw["questions"][1]["answer"] == "B"  # the input is not modified


def test_read_generations_errors(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(gen("p0", 0, "x")) + "\n" + json.dumps({"id": "p0", "output": "y"}) + "\n")
    with pytest.raises(LogicDataError, match="line 2: missing field 'qid'"):
        read_generations(path)


def test_select_problems(fixture_data):
    assert [p.id for p in select_problems(fixture_data, "1:").problems] == ["p1"]
