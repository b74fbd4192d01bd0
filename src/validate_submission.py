"""Check a Kaggle LMSYS submission CSV; exit 0 when valid, 1 with row-level messages when not.

    python src/validate_submission.py sub/submission.csv --test data/lmsys-chatbot-arena/test.csv
    python src/validate_submission.py some.csv              # format only (no test file to compare ids with)

Checks (arena_distill.predict.validate_submission): columns exactly
``id,winner_model_a,winner_model_b,winner_tie``; integer ids, no duplicates; probabilities numeric,
finite, within [0, 1], each row summing to 1; with ``--test``: every test id exactly once, no other id,
rows in the test file's order. ``predict_test.py`` runs the same checks before a submission is renamed
into place.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

from arena_distill.predict import validate_submission  # noqa: E402
from arena_distill.readers import FileFormatError, read_csv  # noqa: E402


def read_test_ids(path: str | Path) -> list[int]:
    """Only the id column of a Kaggle test CSV (the text columns may be huge)."""
    ids = read_csv(path, usecols=["id"], dtype=str, keep_default_na=False)["id"]
    num = pd.to_numeric(ids.str.strip(), errors="coerce")
    if num.isna().any():
        row = int(num.isna().to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: row {row + 2}: not an integer id: {ids.iloc[row]!r}")
    return num.astype("int64").tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submission", help="submission CSV to check")
    parser.add_argument("--test", default=None, help="Kaggle test.csv whose ids the submission must cover, in order")
    args = parser.parse_args(argv)
    try:
        df = read_csv(args.submission, dtype={"id": str}, keep_default_na=True)
        test_ids = read_test_ids(args.test) if args.test else None
    except (OSError, ValueError, FileFormatError) as exc:  # FileFormatError: empty, cut, not UTF-8, ...
        print(f"INVALID: cannot read input: {exc}", file=sys.stderr)
        return 1
    errors = validate_submission(df, test_ids)
    if errors:
        print(f"INVALID: {args.submission} ({len(df)} rows): {len(errors)} problem(s)", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    against = f", matches the {len(test_ids)} test ids in order" if test_ids is not None else ""
    print(f"OK: {args.submission}: {len(df)} rows, columns and probabilities valid{against}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
