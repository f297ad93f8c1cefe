"""Triage benchmark: the bundled triage models on held-out test data, and on the other modality.

    .venv/bin/python bench/triage.py        # writes bench/triage.md

* ``xray-pneumonia`` (supervised) and ``xray-triage`` (one-class, normal-only training) on the
  official Kermany test split (234 NORMAL, 390 PNEUMONIA), never used in training.
* ``mri-triage`` (one-class, trained on ``notumor`` only) on the Nickparvar ``Testing`` folder
  (110 per class; glioma, meningioma, pituitary = abnormal).
* Simulated acquisition changes (:mod:`medenhance.triage.robustness`) of the same test images:
  AUROC when every study, or only one class, is acquired differently.
* Cross-modality: each model on the other modality's test images, where the out-of-distribution
  check should warn instead of giving a confident score.
* Another hospital: the X-ray models on NIH ChestX-ray14 (adults, NIH Clinical Center; the
  paediatric Kermany models never saw it): "No Finding" against any finding.

AUROC/AUPRC with stratified bootstrap 95 % CIs (1000 resamples), sensitivity/specificity/accuracy
with Wilson 95 % intervals,
at the threshold stored in each model card; worklist waits at 5 minutes per study.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from medenhance.io import find_images
from medenhance.models.card import load_model
from medenhance.triage.evaluate import evaluate_triage_folder
from medenhance.triage.robustness import validation_robustness
from medenhance.triage.score import TriageScorer, population_shift

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KERMANY = SHARED / "xray-chest-kermany-224" / "test"
MRI = SHARED / "mri-brain-nickparvar" / "Testing"
NIH = SHARED / "xray-chest-nih14-1024"

CASES = [("xray-pneumonia", KERMANY, None, "AUROC ≥ 0.97, accuracy > 87.5 %"),
         ("xray-triage", KERMANY, None, "AUROC ≥ 0.90"),
         ("mri-triage", MRI, None, "AUROC ≥ 0.90")]


def copies_note(result: dict) -> str:
    """How many files of an evaluation repeated another's picture, and so counted once or, under
    contradicting labels, not at all."""
    repeats, conflicts = len(result["repeats"]), len(result["conflicts"])
    return ((f"; {repeats} file(s) repeating another's picture counted once" if repeats else "")
            + (f"; {conflicts} pair(s) under a normal and an abnormal label left out"
               if conflicts else ""))


def nih_label_folders(root: Path) -> Path:
    """``root/NORMAL`` ("No Finding") and ``root/FINDING`` (any other label) of links to the NIH
    images, the layout ``evaluate_triage_folder`` reads."""
    import csv

    with open(NIH / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]        # the header has 11 fields, like the rows
    for row in rows:
        label = "NORMAL" if row[1] == "No Finding" else "FINDING"
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / row[0]).symlink_to(NIH / "images" / row[0])
    return root


def beyond_p90(results: list, info: dict) -> str:
    """Share of a batch beyond the validation's 90th distance percentile, and whether
    ``medenhance triage`` warns of a population shift for it."""
    share = sum(r.distance > info["distance_p90"] for r in results) / len(results)
    return f"{share:.0%}" + (" (warning)" if population_shift(results, info) else "")


def validation_measure(scorer: TriageScorer) -> dict:
    """The validation AUROC, unchanged and under the simulated changes: as measured in training
    and recorded in the card (the same computation, :func:`validation_robustness`, which is
    run here for cards without it)."""
    return scorer.model.card.extra.get("robustness") or validation_robustness(scorer)


def main() -> None:
    torch.set_num_threads(2)
    started = time.perf_counter()
    lines = ["# Triage benchmark", "",
             f"Measured in one run on {dt.date.today()} with `python {' '.join(sys.argv)}` on "
             f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}."
             " Cells: value [95 % CI: bootstrap for AUROC/AUPRC, Wilson for the proportions];"
             " sensitivity/specificity/accuracy at the "
             "threshold stored in the model card (chosen on validation for 95 % sensitivity); "
             "waits at 5 minutes per study, averaged over 200 random arrival orders. "
             "Research use only, not for diagnosis.", "",
             "| model | test data | AUROC | AUPRC | sensitivity | specificity | accuracy | "
             "abnormal wait, arrival → score order (mean / p90 min) | target | |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    robustness = ["", "## Simulated acquisition changes", "",
                  "AUROC on the same test images changed as another site or scanner would change "
                  "them (`medenhance evaluate-triage --shifts`): gamma 0.6 and 1.6, contrast 0.7, "
                  "blur 1 px, noise 0.03, half resolution, zoom 1.15 and 1.3; each applied to all "
                  "studies, to the normal ones only and to the abnormal ones only. The validation "
                  "column is the same measure on the model's validation split, as measured in training "
                  "and recorded in its card (with the weights in float32; the bundled file "
                  "stores them in float16).", "",
                  "| model | unchanged | mean under changes | lowest (change, studies changed) | "
                  "validation: unchanged / mean under changes |", "|---|---|---|---|---|"]
    own_results = {}        # model -> its test studies, for the out-of-distribution table
    with tempfile.TemporaryDirectory() as tmp:
        for model, folder, normal, target in CASES:
            own_results[model] = []
            r = evaluate_triage_folder(folder, model, Path(tmp) / model, normal_labels=normal,
                                       shifts=True, studies=own_results[model])
            rob = r["robustness"]
            low = min((v, f"{name}, {mode.replace('_', ' ')}")
                      for name, row in rob["shifts"].items() for mode, v in row.items())
            val = validation_measure(TriageScorer(load_model(model)))
            robustness.append(
                f"| {model} | {rob['clean']:.3f} | {rob['robust_auroc']:.3f} | {low[0]:.3f} "
                f"({low[1]}) | {val['clean']:.3f} / {val['robust_auroc']:.3f} |")
            cell = {k: f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]"
                    for k in ("auroc", "auprc", "sensitivity", "specificity", "accuracy")}
            w = r["waits"]
            goal_auroc = 0.97 if model == "xray-pneumonia" else 0.90
            reached = r["auroc"] >= goal_auroc and (model != "xray-pneumonia"
                                                   or r["accuracy"] > 0.875)
            lines.append(
                f"| {model} | {folder.relative_to(SHARED)} ({r['n_abnormal']} abnormal, "
                f"{r['n_normal']} normal{copies_note(r)}) | {cell['auroc']} | {cell['auprc']} | "
                f"{cell['sensitivity']} | {cell['specificity']} | {cell['accuracy']} | "
                f"{w['arrival_mean']:.0f} / {w['arrival_p90']:.0f} → {w['triage_mean']:.0f} / "
                f"{w['triage_p90']:.0f} | {target} | {'reached' if reached else 'not reached'} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines += robustness
    lines += ["", "## Out-of-distribution input", "",
              "A study is out of distribution when its distance to the training images in the "
              "model's features lies beyond the validation's 99th percentile, or when its grey "
              "levels, their layout and sharpness do (`medenhance.triage.domain`), or when its "
              "frames are too small for the model, or its DICOM Modality is not the model's. "
              "The fifth column counts the first two checks apart (a study can be beyond "
              "both).", "",
              "| model | given | images | flagged out of distribution | beyond the limit of: "
              "features / grey levels, layout and sharpness | flagged abnormal or out of "
              "distribution (no confident normal) | batch beyond the validation's 90th distance "
              "percentile (warning above 50 %) |", "|---|---|---|---|---|---|---|"]
    for model, own in (("xray-pneumonia", "xray"), ("xray-triage", "xray"),
                       ("mri-triage", "mri")):
        scorer = TriageScorer(load_model(model))
        for name, folder in (("xray", KERMANY), ("mri", MRI)):
            # The own modality's test studies were scored above, by the evaluation.
            res = own_results[model] if name == own else scorer.score_files(find_images([folder]))
            ood = sum(r.ood for r in res)
            either = sum(max(r.ood, r.flag) for r in res)
            by_features = sum(r.distance > scorer.info["ood_distance"] for r in res)
            by_layout = sum(r.domain_distance > scorer.domain.limit for r in res)
            label = "own modality" if name == own else "other modality"
            lines.append(f"| {model} | {folder.relative_to(SHARED)} ({label}) | {len(res)} | "
                         f"{ood} ({ood / len(res):.1%}) | {by_features} / {by_layout} | "
                         f"{either} ({either / len(res):.1%}) | "
                         f"{beyond_p90(res, scorer.info)} |")
    lines += ["", "## Another hospital: NIH ChestX-ray14, adults", "",
              "The X-ray models were trained on paediatric radiographs from one centre "
              "(Kermany); here they score 64 adult radiographs from the NIH Clinical Center "
              "(1024x1024 PNG), normal = \"No Finding\", abnormal = any of the 14 findings "
              "(pneumonia among them, but mostly others: a test of the one-class model's task, "
              "outside the pneumonia classifier's).", "",
              "| model | images (abnormal / normal) | AUROC | sensitivity | specificity | "
              "flagged out of distribution | batch beyond the 90th distance percentile |",
              "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = nih_label_folders(Path(tmp) / "nih")
        for model in ("xray-pneumonia", "xray-triage"):
            res: list = []
            r = evaluate_triage_folder(folder, model, Path(tmp) / f"nih-{model}",
                                       normal_labels=["NORMAL"], studies=res)
            scorer = TriageScorer(load_model(model))
            ood = sum(x.ood for x in res)
            cell = {k: f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]"
                    for k in ("auroc", "sensitivity", "specificity")}
            lines.append(f"| {model} | {r['n_abnormal']} / {r['n_normal']} | {cell['auroc']} | "
                         f"{cell['sensitivity']} | {cell['specificity']} | {ood} "
                         f"({ood / len(res):.1%}) | {beyond_p90(res, scorer.info)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", f"Total time {time.perf_counter() - started:.0f} s.", ""]
    out = Path(__file__).with_suffix(".md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
