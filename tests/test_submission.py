"""The submission validator rejects every malformed file it should, the writer never leaves an invalid
file at the final path, and the standalone CLI reports row-level problems with a non-zero exit."""
from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from arena_distill.predict import SubmissionError, validate_submission, write_submission

TEST_IDS = [30192, 53567, 65089, 1111, 42]


def _good() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=len(TEST_IDS))
    return pd.DataFrame({"id": TEST_IDS, "winner_model_a": p[:, 0], "winner_model_b": p[:, 1],
                         "winner_tie": p[:, 2]})


def _cli():
    spec = importlib.util.spec_from_file_location("validate_submission", "src/validate_submission.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_valid_submission_passes():
    assert validate_submission(_good(), TEST_IDS) == []
    assert validate_submission(_good()) == []


@pytest.mark.parametrize("mutate,pattern", [
    (lambda d: d.drop(index=2), "1 test id\\(s\\) missing.*65089"),
    (lambda d: pd.concat([d, d.iloc[[1]]]), "duplicate id.*row 6 \\(id 53567\\)"),
    (lambda d: d.assign(winner_tie=d.winner_tie.where(d.index != 3, np.nan)), "winner_tie: 1 NaN.*row 4 \\(id 1111\\)"),
    (lambda d: d.assign(winner_model_a=d.winner_model_a.where(d.index != 0, np.inf)), "infinite"),
    (lambda d: d.assign(winner_model_a=d.winner_model_a + 0.1), "5 row\\(s\\) do not sum to 1"),
    (lambda d: d.assign(winner_model_b=d.winner_model_b.where(d.index != 1, -0.2),
                        winner_tie=d.winner_tie.where(d.index != 1, d.winner_tie + 0.2)), "outside \\[0, 1\\]"),
    (lambda d: d.rename(columns={"winner_tie": "tie"}), "missing \\['winner_tie'\\]"),
    (lambda d: d[["id", "winner_model_b", "winner_model_a", "winner_tie"]], "wrong order"),
    (lambda d: d.assign(extra=1), "unexpected \\['extra'\\]"),
    (lambda d: d.iloc[::-1], "not in test order"),
    (lambda d: d.assign(id=[30192, 53567, 65089, 1111, 7]), "not in the test file: \\[7\\]"),
    (lambda d: d.assign(id=["30192", "x", "65089", "1111", "42"]), "non-integer id.*row 2"),
])
def test_validator_rejects(mutate, pattern):
    errors = validate_submission(mutate(_good()), TEST_IDS)
    assert errors, "expected a problem"
    assert any(pd.Series([e]).str.contains(pattern).iloc[0] for e in errors), errors


def test_writer_refuses_invalid_and_keeps_final_path_clean(tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    p = _good()[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    bad = p.copy()
    bad[2, 0] = np.nan
    with pytest.raises(SubmissionError, match="NaN"):
        write_submission(out, TEST_IDS, bad, TEST_IDS)
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])  # no temp file
    write_submission(out, TEST_IDS, p, TEST_IDS)
    back = pd.read_csv(out)
    assert list(back.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert back["id"].tolist() == TEST_IDS
    np.testing.assert_allclose(back.iloc[:, 1:].to_numpy(), p, atol=1e-8)
    with pytest.raises(SubmissionError, match="missing"):
        write_submission(out, TEST_IDS[:-1], p[:-1], TEST_IDS)
    assert pd.read_csv(out)["id"].tolist() == TEST_IDS  # the earlier valid file is untouched


def test_cli_exit_codes(tmp_path, capsys, monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)
    cli = _cli()
    test_csv = tmp_path / "test.csv"
    pd.DataFrame({"id": TEST_IDS, "prompt": '["q"]', "response_a": '["a"]', "response_b": '["b"]'}).to_csv(
        test_csv, index=False)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    _good().to_csv(good, index=False)
    _good().drop(index=0).to_csv(bad, index=False)
    assert cli.main([str(good), "--test", str(test_csv)]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main([str(bad), "--test", str(test_csv)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and "30192" in err
    assert cli.main([str(bad)]) == 0  # format alone is fine without the test file
    assert cli.main([str(tmp_path / "nope.csv")]) == 1
