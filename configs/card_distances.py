"""Add ``distance_p90`` and ``distance`` to the cards of bundled triage models trained before
they were recorded.

    .venv/bin/python configs/card_distances.py xray-pneumonia xray-triage mri-triage

``train-triage`` stores the 90th percentile of the validation studies' feature distances, which
``medenhance triage`` compares a batch with (:func:`medenhance.triage.score.population_shift`).
For a model trained before that, the same number comes from its validation split rebuilt from the
card's config, scored by the bundled (float16) weights; only the card changes. ``distance`` says
how training measured the feature distance (``views``: averaged over the 8 rotated/flipped views,
where the Gaussian was fitted to all of them), as the same rule in ``train_triage`` decides it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medenhance.models.card import load_model
from medenhance.triage.data import model_inputs
from medenhance.triage.robustness import validation_split
from medenhance.triage.score import TriageScorer

ROOT = Path(__file__).resolve().parents[1]


def main(names: list[str]) -> None:
    for name in names:
        path = ROOT / "src" / "medenhance" / "weights" / f"{name}.safetensors"
        scorer = TriageScorer(load_model(path))
        config = scorer.model.card.config
        views = (config["kind"] == "oneclass" and config["view_average"]
                 and config["oneclass_method"] in ("transforms", "contrastive"))
        scorer.info["distance"] = "views" if views else "upright"
        frames, _ = validation_split(scorer)
        inputs = model_inputs(frames, scorer.info)
        dist = np.concatenate([scorer.score_frames(inputs[i: i + 64])[1]
                               for i in range(0, len(inputs), 64)])
        card = scorer.model.card
        card.extra["triage"]["distance_p90"] = float(np.percentile(dist, 90))
        # As a check: the recorded out-of-distribution distance is the same split's 99th.
        print(f"{name}: {scorer.info['distance']} distance_p90 {np.percentile(dist, 90):.3f} "
              f"(99th {np.percentile(dist, 99):.3f}, card's ood_distance "
              f"{card.extra['triage']['ood_distance']:.3f}) on {len(dist)} validation studies")
        path.with_suffix(".json").write_text(card.to_json())


if __name__ == "__main__":
    main(sys.argv[1:])
