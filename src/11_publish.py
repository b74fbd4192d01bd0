"""Stage 11: write the model card of the final judge and, with ``push_to_hub=<repo>``, upload it (section ``publish``).

Reads   the model folder: ``model_save/final_model_gptq/`` (stage 9) or ``model_save/final_merged/`` (stage 8)
        (``model_source=auto`` takes the quantized one when it exists), its ``encoding.json`` (how rows are
        encoded), ``quant_report.json`` / ``average_report.json``; the per-fold ``metrics.json`` of the student and
        teachers (stages 4, 7); ``<processed_dir>/report.json`` (stage 2: the training data, rows and sources)
Writes  ``<model folder>/README.md``: the model card (CV metrics, training data, base models and their licenses,
        intended use and limits, the encoding and template, how to call it); a copy at ``card_out``;
        ``publish_report.json`` next to it (what was uploaded where). With ``push_to_hub=<user>/<name>``: creates
        the Hub repo (``private=true`` by default) and uploads the folder through ``huggingface_hub``
        (``HfApi.create_repo`` + ``HfApi.upload_folder``); the token comes from the environment (``HF_TOKEN``,
        or a ``huggingface-cli login``), never from a config file. ``heldout_predictions.parquet`` (row ids and
        labels of the competition data) and hidden or temporary files are not uploaded.

Launch (repository root; CPU, seconds plus the upload):
    python src/11_publish.py --config configs/a100x8.yaml                       # card only
    HF_HUB_OFFLINE=0 python src/11_publish.py --config configs/a100x8.yaml push_to_hub=me/arena-judge-9b
    PUSH_TO_HUB=me/arena-judge-9b sh run_final.sh                               # after stages 8, 9 and 10
Not cached: the card is rewritten on every run (it reads the latest reports); an upload is a new commit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arena_distill import config as C  # noqa: E402
from arena_distill import readers  # noqa: E402
from arena_distill.dist import print0  # noqa: E402
from arena_distill.encoding_record import RECORD_FILE  # noqa: E402
from arena_distill.io import StageInputError, atomic_write_json, atomic_write_text, run_stage  # noqa: E402

# Hub license ids of the seed's models (https://huggingface.co/docs/hub/repositories-licenses); a model not
# listed here needs `licenses: {name: id}` in the profile, else the card says "unknown" and names it.
DEFAULT_LICENSES = {"Gemma2_9b": "gemma", "llama3_70b": "llama3", "qwen2_72b": "tongyi-qianwen"}
HUB_NAMES = {"Gemma2_9b": "google/gemma-2-9b-it", "llama3_70b": "meta-llama/Meta-Llama-3-70B-Instruct",
             "qwen2_72b": "Qwen/Qwen2-72B-Instruct"}
NOT_UPLOADED = ["heldout_predictions.parquet", ".*", "*.tmp"]


@dataclasses.dataclass
class PublishConfig:
    student: str = C.field("", help="student name (common)")
    teachers: list[str] = C.field([], help="teacher names (common)")
    n_folds: int = C.field(5, help="number of folds (common)")
    save_dir: str = C.field("model_save", help="adapters and merged/quantized models (common)")
    processed_dir: str = C.field("data/processed_data", help="stage-2 output, for the data summary (common)")
    model_source: Literal["auto", "gptq", "merged"] = C.field("auto", help="auto = gptq if present, else merged")
    gptq_dir: str = C.field("", help="quantized model folder; empty = <save_dir>/final_model_gptq")
    merged_dir: str = C.field("", help="merged model folder; empty = <save_dir>/final_merged")
    push_to_hub: str = C.field("", help="Hub repo id (<user or org>/<name>) to upload to; empty = card only")
    private: bool = C.field(True, help="create the Hub repo as private (flip it public on the Hub when ready)")
    licenses: dict = C.field({}, help="base model -> Hub license id, added to the seed's models' defaults")
    base_model_ids: dict = C.field({}, help="base model -> Hub id for the card's base_model field")
    card_out: str = C.field("sub/model_card.md", help="copy of the card (and publish_report.json next to it)")
    commit_message: str = C.field("Upload arena-distill judge", help="Hub commit message")

    def __post_init__(self) -> None:
        if self.push_to_hub and self.push_to_hub.count("/") != 1:
            raise ValueError(f"push_to_hub must be <user or org>/<name>, got {self.push_to_hub!r}")


# --------------------------------------------------------------------------------------------- card
def _json(path: Path) -> dict | None:
    return readers.read_json(path) if path.is_file() else None


def fold_metrics(save: Path, name: str, n_folds: int) -> list[tuple[int, dict]]:
    return [(k, m) for k in range(n_folds) if (m := _json(save / f"{name}fold{k}" / "metrics.json"))]


def _fmt(x: object, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"


def build_card(cfg: PublishConfig, kind: str, folder: Path) -> tuple[str, dict]:
    """The README.md text (YAML front matter + markdown) and the facts it was built from."""
    save = Path(cfg.save_dir)
    record = _json(folder / RECORD_FILE)
    if record is None:
        raise StageInputError(f"{folder}/{RECORD_FILE} is missing: the card must state the encoding -> re-run "
                              f"stage 8 (and 9) with force=true")
    licenses = {**DEFAULT_LICENSES, **cfg.licenses}
    hub_ids = {**HUB_NAMES, **cfg.base_model_ids}
    bases = [cfg.student, *cfg.teachers]
    model_cfg = _json(folder / "config.json") or {}
    quant = _json(folder / "quant_report.json") if kind == "gptq" else None
    data = _json(Path(cfg.processed_dir) / "report.json")
    license_id = licenses.get(cfg.student, "other")

    front = ["---", f"license: {license_id}", "library_name: transformers", "pipeline_tag: text-classification",
             "tags: [reward-model, pairwise-preference, lmsys-arena, knowledge-distillation]"]
    if cfg.student in hub_ids:
        front.append(f"base_model: {hub_ids[cfg.student]}")
    front.append("---")
    lines = [f"# Arena judge: {cfg.student} distilled from {', '.join(cfg.teachers) or 'its own labels'}", "",
             "Given a prompt and two responses, predicts P(A wins), P(B wins), P(tie) as human voters on Chatbot "
             f"Arena would. A `{model_cfg.get('architectures', ['?'])[0]}` with a 3-way score head"
             + (f", GPTQ {quant.get('bits', '?')}-bit" if quant else ", full precision") + ".", "",
             "## Use", "", "```python", "from arena_distill.judge import Judge   # github: this project, src/",
             "judge = Judge('<this folder>')", "probs = judge.predict(['What is 2+2?'], ['4'], ['5'])  "
             "# [[p_a, p_b, p_tie]]", "```", "",
             "or `python src/score_pairs.py input=pairs.jsonl output=scores.jsonl model=<this folder>`. The input "
             "must be encoded exactly as below; plain `AutoModelForSequenceClassification` on raw text is not the "
             "trained input.", "", "## Encoding (as in training)", "",
             "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in record.get("encoding", {}).items()]
    lines += ["", "Template (then one EOS token; turns of a side joined by a newline; A/B-swap averaging at test "
              "time):", "", "```", record.get("template", "").rstrip("\n"), "```", "", "## Cross-validation", "",
              "| model | fold | valid log loss | valid accuracy | rows |", "|---|---|---|---|---|"]
    cv = {}
    for name in bases:
        rows = fold_metrics(save, name, cfg.n_folds)
        cv[name] = {k: m.get("valid_log_loss") for k, m in rows}
        lines += [f"| {name} | {k} | {_fmt(m.get('valid_log_loss'))} | {_fmt(m.get('valid_accuracy'))} | "
                  f"{m.get('n_valid', '-')} |" for k, m in rows]
    if not any(cv.values()):
        lines.append("| (no fold metrics.json found) | | | | |")
    if quant and isinstance(quant.get("check"), dict):
        c = quant["check"]
        lines += ["", f"Quantized vs full precision on {c.get('rows')} held-out rows (optimistic, seen by other "
                  f"folds): log loss {_fmt(c.get('fp_log_loss'))} -> {_fmt(c.get('quant_log_loss'))}, "
                  f"argmax agreement {_fmt(c.get('argmax_agreement'), 3)}."]
    lines += ["", "## Training data", ""]
    if data:
        lines.append(f"- rows per source: {data.get('rows_in')}")
        for src, imp in (data.get("imports") or {}).items():
            lines.append(f"- {src}: `{Path(imp['file']).name}` ({imp['format']}): {imp['rows_in']} in, "
                         f"{imp['rows_out']} out, dropped {imp['dropped'] or 'none'}")
    else:
        lines.append(f"- {Path(cfg.processed_dir) / 'report.json'} not found (stage 2 writes it)")
    lines += ["", "Check the terms of each data source before reuse (the Kaggle LMSYS competition rules; Chatbot "
              "Arena conversation datasets; UltraFeedback).", "", "## Base models and licenses", "",
              "| role | model | license |", "|---|---|---|"]
    for role, name in [("student (these weights)", cfg.student)] + [("teacher", t) for t in cfg.teachers]:
        lines.append(f"| {role} | {hub_ids.get(name, name)} | {licenses.get(name, 'unknown: set publish.licenses')} |")
    lines += ["", "This model is a derivative of the student base model and is bound by its license; teacher "
              "outputs were used as distillation targets.", "", "## Intended use and limits", "",
              "- Intended: ranking or filtering responses, preference-data curation, evaluation research.",
              "- It imitates crowd voters on Chatbot Arena (2023-2024 style prompts, mostly English): it rewards "
              "what they rewarded (length, formatting) and is not a factuality or safety checker.",
              "- Not for decisions about people. Ties are hard to predict; probabilities are calibrated only on "
              "data like the training data.", ""]
    facts = {"kind": kind, "folder": str(folder), "license": license_id, "encoding": record.get("encoding"),
             "cv": cv}
    return "\n".join(front + lines), facts


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    cfg = C.load_config(PublishConfig, "publish", argv)
    if not cfg.student:
        raise StageInputError("no student set: set common.student in the profile or student=<name>")
    save = Path(cfg.save_dir)
    candidates = {"gptq": Path(cfg.gptq_dir or save / "final_model_gptq"),
                  "merged": Path(cfg.merged_dir or save / "final_merged")}
    order = ["gptq", "merged"] if cfg.model_source == "auto" else [cfg.model_source]
    found = [(k, candidates[k]) for k in order if (candidates[k] / "config.json").is_file()]
    if not found:
        raise StageInputError(f"no model to publish in {[str(candidates[k]) for k in order]} -> run first: "
                              "sh run_final.sh")
    kind, folder = found[0]
    card, facts = build_card(cfg, kind, folder)
    atomic_write_text(folder / "README.md", card)
    atomic_write_text(cfg.card_out, card)
    print0(f"[publish] model card -> {folder / 'README.md'} (copy {cfg.card_out})")

    report = {**facts, "card": str(folder / "README.md"), "pushed": False,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if cfg.push_to_hub:
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            raise StageInputError("HF_HUB_OFFLINE is set: run with HF_HUB_OFFLINE=0 to upload (the card is "
                                  f"written: {folder / 'README.md'})")
        api = HfApi(token=os.environ.get("HF_TOKEN") or None)
        url = api.create_repo(cfg.push_to_hub, repo_type="model", private=cfg.private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=cfg.push_to_hub, repo_type="model",
                                   commit_message=cfg.commit_message, ignore_patterns=NOT_UPLOADED)
        report.update(pushed=True, repo=cfg.push_to_hub, repo_url=str(url), commit_url=str(commit),
                      private=cfg.private)
        print0(f"[publish] uploaded {folder} -> {url} ({commit})")
    atomic_write_json(Path(cfg.card_out).parent / "publish_report.json", report)
    return report


if __name__ == "__main__":
    run_stage(main)
