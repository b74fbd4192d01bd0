"""Stage 10: one markdown report of the LMSYS run (config section ``report``).

Reads   model_save/<teacher>fold<k>/metrics.json, model_save/<student>fold<k>/metrics.json (stages 4, 7)
        model_save/<model>fold<k>/oof.csv (stages 4, 7: out-of-fold predictions, see arena_distill.oof)
        model_save/<model>fold<k>/log.jsonl, model_save/<model>_ut/log.jsonl (stages 3, 4, 7: loss curves)
        model_save/final_merged/{average_report.json, heldout_predictions.parquet} (stage 8)
        model_save/final_model_gptq/quant_report.json (stage 9), sub/predict_report.json (predict_test.py)
        <data_dir>/truth.csv (sample data only: the true class probabilities, for the best achievable loss)
Writes  sub/cv_report.md (``out``), sub/reliability.png (``png``) and sub/curves/*.png (``curves_dir``):
        per-fold CV of teachers and student, the true out-of-fold CV (pooled oof.csv), train/valid loss
        curves per fold and stage, the fold-averaged student (lora_mean vs delta_mean), fp vs quantized,
        prediction speed, and a reliability (calibration) diagram of the student's out-of-fold predictions
        (falling back to the averaged student's held-out rows, which it trained on, when there are none).

Launch (repository root; CPU, seconds):
    python src/10_report.py --config configs/tiny.yaml
    sh run_final.sh                                   # runs it after stages 8 and 9
Sections whose inputs are missing say which script produces them; the stage fails only when there is
nothing at all to report. Cheap and always regenerated (no DONE.json skip).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from arena_distill import config as C  # noqa: E402
from arena_distill.io import atomic_path, atomic_write_text, run_stage, StageInputError  # noqa: E402
from arena_distill.metrics import cv_table, expected_calibration_error, log_loss, reliability_bins  # noqa: E402
from arena_distill.dist import print0  # noqa: E402
from arena_distill import readers  # noqa: E402
from arena_distill.oof import PROB_COLUMNS, oof_table, pooled, read_curve  # noqa: E402

CLASS_NAMES = ("A wins", "B wins", "tie")


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class ReportConfig:
    teachers: list[str] = C.field([], help="teacher names (common)")
    student: str = C.field("", help="student name (common)")
    n_folds: int = C.field(5, help="number of folds (common)")
    save_dir: str = C.field("model_save", help="adapters and merged/quantized models (common)")
    data_dir: str = C.field("data/lmsys-chatbot-arena", help="Kaggle files folder (common); truth.csv if present")
    merged_dir: str = C.field("", help="stage 8 output; empty = <save_dir>/final_merged")
    gptq_dir: str = C.field("", help="stage 9 output; empty = <save_dir>/final_model_gptq")
    predict_report: str = C.field("sub/predict_report.json", help="written by predict_test.py")
    out: str = C.field("sub/cv_report.md", help="markdown report")
    png: str = C.field("sub/reliability.png", help="reliability diagram")
    n_bins: int = C.field(10, help="probability bins of the reliability diagram")
    curves_dir: str = C.field("sub/curves", help="train/valid loss curve PNGs, one per run folder")


def read_json(path: Path) -> dict | None:
    return readers.read_json(path) if path.is_file() else None


def fmt(x, digits: int = 4) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


# --------------------------------------------------------------------------------------------- plot
def reliability_png(probs: np.ndarray, labels: np.ndarray, path: Path, n_bins: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = reliability_bins(probs, labels, n_bins)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    for c, ax in enumerate(axes):
        pred = np.array(bins[f"class{c}_pred"], dtype=float)
        freq = np.array(bins[f"class{c}_freq"], dtype=float)
        count = np.array(bins[f"class{c}_count"])
        ok = count > 0
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
        ax.plot(pred[ok], freq[ok], "o-", label="model")
        for x, y, n in zip(pred[ok], freq[ok], count[ok]):
            ax.annotate(str(n), (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.set_title(f"{CLASS_NAMES[c]} (label {c})")
        ax.set_xlabel("mean predicted probability")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("observed frequency")
    axes[0].legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def curve_png(log_path: Path, path: Path, title: str) -> bool:
    """Train loss per optimizer step and valid log loss at the evaluation steps; False when the log is empty."""
    train, valid = read_curve(log_path)
    if not train and not valid:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), lw=1, label="train loss")
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid log loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


def curve_section(cfg: ReportConfig, save: Path, out: Path) -> list[str]:
    """Markdown lines with one PNG per run folder that has a log.jsonl, grouped by stage."""
    runs = [("post-pretrain (stage 3)", n, save / f"{n}_ut") for n in [*cfg.teachers, cfg.student] if n]
    runs += [(f"teacher (stage 4) fold {k}", n, save / f"{n}fold{k}") for n in cfg.teachers for k in range(cfg.n_folds)]
    runs += [(f"student (stage 7) fold {k}", cfg.student, save / f"{cfg.student}fold{k}")
             for k in range(cfg.n_folds) if cfg.student]
    lines, made = ["## Training curves", ""], 0
    for what, name, folder in runs:
        log = folder / "log.jsonl"
        png = Path(cfg.curves_dir) / f"{folder.name}.png"
        if log.is_file() and curve_png(log, png, f"{name}: {what}"):
            rel = os.path.relpath(png.resolve(), out.parent.resolve())
            lines.append(f"- {name}, {what}: ![{folder.name}]({Path(rel).as_posix()})")
            made += 1
    if not made:
        lines.append("No training logs yet (model_save/<model>fold<k>/log.jsonl) -> run `sh run_pipeline.sh <fold>`.")
    return lines + [""]


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> str:
    cfg = C.load_config(ReportConfig, "report", argv)
    save = Path(cfg.save_dir)
    merged = Path(cfg.merged_dir or save / "final_merged")
    gptq = Path(cfg.gptq_dir or save / "final_model_gptq")
    out, png = Path(cfg.out), Path(cfg.png)
    found = 0
    lines = [f"# CV report: {cfg.student or '?'} distilled from {', '.join(cfg.teachers) or '-'}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `src/10_report.py` from profile "
             f"`{cfg.__dict__.get('_profile_path')}`. Log loss is the Kaggle metric (lower is better).", ""]

    # ------------------------------------------------------------------------------------- per-fold CV
    names = [*cfg.teachers, *([cfg.student] if cfg.student else [])]
    have_folds = [n for n in names if any((save / f"{n}fold{k}" / "metrics.json").is_file()
                                          for k in range(cfg.n_folds))]
    found += len(have_folds)
    lines += ["## Per-fold validation (teachers, student)", ""]
    if have_folds:
        lines += [cv_table(save, names, cfg.n_folds)]
        prior = [m["prior_log_loss"] for k in range(cfg.n_folds)
                 if (m := read_json(save / f"{cfg.student}fold{k}" / "metrics.json")) and "prior_log_loss" in m]
        if prior:
            lines += [f"Class-prior baseline (always predict the training class frequencies): {np.mean(prior):.4f}.", ""]
    else:
        lines += ["No fold metrics yet -> run `sh run_pipeline.sh <fold>` for each fold.", ""]

    # ------------------------------------------------------------------------------------- out-of-fold CV
    hints = {n: f"stage 4 (`python src/04_train_teacher.py model={n} fold=<k>`)" for n in cfg.teachers}
    if cfg.student:
        hints[cfg.student] = "stage 7 (`python src/07_distill_student.py fold=<k>`)"
    table, oof = oof_table(save, names, cfg.n_folds, hints)
    found += sum(bool(v) for v in oof.values())
    lines += ["## Out-of-fold CV (oof.csv of stages 4 and 7)", "",
              "Each fold's dev rows scored by the checkpoint that fold keeps, never trained on them; pooled over "
              "folds this is the CV estimate of the recipe (\"partial\": some folds missing).", "", table]

    lines += curve_section(cfg, save, out)

    # ------------------------------------------------------------------------------------- averaged student
    avg = read_json(merged / "average_report.json")
    lines += ["## Fold-averaged student (stage 8)", ""]
    preds = None
    if avg:
        found += 1
        lines += [f"Chosen method: **{avg['method']}** over folds {avg['folds']} ({avg['lora_layers']} LoRA layers).", "",
                  "| averaging | held-out log loss | accuracy | rows |", "|---|---|---|---|"]
        for m in ("lora_mean", "delta_mean"):
            if m in avg:
                lines.append(f"| {m} | {avg[m]['log_loss']:.4f} | {avg[m]['accuracy']:.3f} | {avg[m]['n']} |")
        dis = avg.get("disagreement")
        if dis:
            lines += ["", f"lora_mean (mean of A, B: the seed) vs delta_mean (mean of B@A: exact): mean |dp| "
                      f"{dis['mean_abs_prob_diff']:.2e}, max |dp| {dis['max_abs_prob_diff']:.2e}, log loss delta "
                      f"{dis['log_loss_delta']:+.5f}, argmax agreement {dis['argmax_agreement']:.3f}; largest weight "
                      f"difference {avg.get('max_weight_difference', float('nan')):.2e}."]
        lines += ["", "**Optimistic:** every held-out row was in the training set of all fold models but its own "
                  "(4 of 5), so the averaged model has effectively seen it. These numbers check the merge; the "
                  "out-of-fold table above is the CV estimate.", ""]
        pred_path = merged / "heldout_predictions.parquet"
        if pred_path.is_file():
            preds = readers.read_parquet(pred_path)
    else:
        lines += [f"Missing {merged}/average_report.json -> run `python src/08_average_merge.py` "
                  "(or `sh run_final.sh`).", ""]

    truth_path = Path(cfg.data_dir) / "truth.csv"
    if preds is not None and truth_path.is_file():
        truth = readers.read_csv(truth_path).drop_duplicates("id").set_index("id")
        if {"p_a", "p_b", "p_tie"} <= set(truth.columns) and preds["id"].isin(truth.index).all():
            best = log_loss(truth.loc[preds["id"], ["p_a", "p_b", "p_tie"]].to_numpy(), preds["label"].to_numpy())
            lines += [f"Sample data: the generator's true probabilities score **{best:.4f}** on these rows, the "
                      "best achievable log loss.", ""]

    # ------------------------------------------------------------------------------------- quantization
    q = read_json(gptq / "quant_report.json")
    lines += ["## Full precision vs GPTQ (stage 9)", ""]
    if q:
        found += 1
        lines += [f"{q['bits']}-bit, group size {q['group_size']}, {q['n_calibration']} calibration rows (mean "
                  f"{q['calibration_tokens_mean']:.0f} tokens, max {q['calibration_max_length']}), quantized in "
                  f"{q['quantize_seconds']:.1f} s.", ""]
        c = q.get("check")
        if c:
            lines += ["| model | held-out log loss | accuracy |", "|---|---|---|",
                      f"| full precision | {c['fp_log_loss']:.4f} | {c['fp_accuracy']:.3f} |",
                      f"| GPTQ {q['bits']}-bit | {c['quant_log_loss']:.4f} | {c['quant_accuracy']:.3f} |", "",
                      f"Log loss delta {c['log_loss_delta']:+.5f}; max |dp| {c['max_abs_prob_diff']:.4f}, mean |dp| "
                      f"{c['mean_abs_prob_diff']:.5f}, argmax agreement {c['argmax_agreement']:.3f} on "
                      f"{c['rows']} rows ({c['source']}).", ""]
    else:
        lines += [f"Missing {gptq}/quant_report.json -> run `python src/09_quantize.py` (or `sh run_final.sh`).", ""]

    # ------------------------------------------------------------------------------------- prediction
    pr = read_json(Path(cfg.predict_report))
    lines += ["## Test prediction (predict_test.py)", ""]
    if pr:
        found += 1
        s = pr["rank0_scoring"]
        lines += [f"{pr['rows']} test rows from `{pr['test_csv']}` with the {pr['model_source']} model on "
                  f"{pr['device']} ({pr['dtype']}, world size {pr['world_size']}), max length {pr['max_length']}, "
                  f"TTA {'on' if pr['tta'] else 'off'}, {'length-sorted' if pr['sorted'] else 'file-order'} batches "
                  f"of {pr['batch_size']}: {s['rows_per_s']:.1f} sequences/s on rank 0, padding efficiency "
                  f"{s['padding_efficiency']:.3f}, {pr['total_seconds']:.1f} s in all."]
        if "truth" in pr:
            lines += ["", f"Test log loss against the sample data's labels: **{pr['truth']['log_loss']:.4f}** "
                      f"(true probabilities: {pr['truth']['best_achievable_log_loss']:.4f})."]
        lines += [""]
    else:
        lines += [f"Missing {cfg.predict_report} -> run `python predict_test.py`.", ""]

    # ------------------------------------------------------------------------------------- reliability
    lines += ["## Calibration", ""]
    student_oof = oof.get(cfg.student) or {}
    if student_oof:
        pool = pooled(student_oof)
        probs = pool[PROB_COLUMNS].to_numpy(dtype=np.float64)
        labels = pool["label"].to_numpy().astype(int)
        folds = sorted(student_oof)
        reliability_png(probs, labels, png, cfg.n_bins,
                        f"{cfg.student} out-of-fold, folds {folds}, {len(labels)} rows")
        rel = os.path.relpath(png.resolve(), out.parent.resolve())
        lines += [f"![reliability diagram]({Path(rel).as_posix()})", "",
                  f"One-vs-rest reliability per class (numbers: rows per bin) on the student's out-of-fold "
                  f"predictions (folds {folds}); top-label ECE {expected_calibration_error(probs, labels, cfg.n_bins):.4f}.",
                  ""]
    elif preds is not None and avg:
        lines += [f"No out-of-fold predictions of {cfg.student} yet (model_save/{cfg.student}fold<k>/oof.csv, "
                  "stage 7): the diagram below uses the averaged student's held-out rows, which it trained on "
                  "(optimistic).", ""]
        m = avg["method"]
        probs = preds[[f"p_a_{m}", f"p_b_{m}", f"p_tie_{m}"]].to_numpy(dtype=np.float64)
        labels = preds["label"].to_numpy().astype(int)
        reliability_png(probs, labels, png, cfg.n_bins,
                        f"{cfg.student} fold average ({m}), {len(labels)} held-out rows (optimistic)")
        rel = os.path.relpath(png.resolve(), out.parent.resolve())
        lines += [f"![reliability diagram]({Path(rel).as_posix()})", "",
                  f"One-vs-rest reliability per class (numbers: rows per bin); top-label ECE "
                  f"{expected_calibration_error(probs, labels, cfg.n_bins):.4f}.", ""]
    else:
        lines += ["No held-out predictions yet (stage 8 writes them) -> no reliability diagram.", ""]

    if found == 0:
        raise StageInputError("nothing to report: no fold metrics, no merged or quantized model"
                              " -> run first: sh run_pipeline.sh <fold> for each fold, then sh run_final.sh")
    text = "\n".join(lines)
    atomic_write_text(out, text)
    print0(f"[report] wrote {out}" + (f" and {png}" if png.is_file() else ""))
    return text


if __name__ == "__main__":
    run_stage(main)
