"""Add the validation split's class counts to bundled triage models saved before they were kept.

    .venv/bin/python configs/card_val_counts.py xray-pneumonia xray-triage mri-triage

``train-triage`` records how many normal and abnormal studies the validation split held
(``val_normal``, ``val_abnormal``), so that ``evaluate-triage`` can tell an operating point that
is worse than on validation from chance. For a model trained before that, the split is rebuilt
from the card's config, as a retraining would rebuild it, and checked against the card: scored
again, it must give the sensitivity and specificity the card recorded. Only the card changes;
the weights and the domain check's tensors are written back as they were (checked here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from bundle import resave_unchanged

from medenhance.models.card import load_model
from medenhance.triage.metrics import sens_spec
from medenhance.triage.robustness import frame_scores, rebuilt_split
from medenhance.triage.score import TriageScorer

ROOT = Path(__file__).resolve().parents[1]


def main(names: list[str]) -> None:
    for name in names:
        path = ROOT / "src" / "medenhance" / "weights" / f"{name}.safetensors"
        loaded = load_model(path)
        data, _, val = rebuilt_split(loaded.card.config)
        labels = data.labels[val]
        scorer = TriageScorer(loaded)
        logits = frame_scores(scorer)(data.images[val])
        sens, spec = sens_spec(labels, 1 / (1 + np.exp(-logits)), scorer.threshold)
        metrics = loaded.card.metrics
        # The card's numbers came from the weights in float32; the bundled file is float16.
        assert len(labels) == metrics["val_images"], (len(labels), metrics["val_images"])
        assert abs(sens - metrics["val_sensitivity"]) < 0.02, (sens, metrics["val_sensitivity"])
        assert abs(spec - metrics["val_specificity"]) < 0.02, (spec, metrics["val_specificity"])
        metrics["val_abnormal"] = int(labels.sum())
        metrics["val_normal"] = int(len(labels) - labels.sum())
        resave_unchanged(path, loaded)
        print(f"{name}: validation {metrics['val_abnormal']} abnormal, {metrics['val_normal']} "
              f"normal; rescored sensitivity {sens:.3f} (card {metrics['val_sensitivity']:.3f}),"
              f" specificity {spec:.3f} (card {metrics['val_specificity']:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
