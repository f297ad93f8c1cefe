"""Add the check of what a model was trained on (:mod:`medenhance.triage.domain`) and the
smallest side of its training images (:func:`medenhance.triage.data.too_small`) to bundled triage
models saved before they existed.

    .venv/bin/python configs/card_domain_check.py xray-pneumonia xray-triage mri-triage

``train-triage`` fits it to the training images and their zoomed and acquisition-changed copies
and sets its limit on the validation split. For a model trained before that, both come from the splits
rebuilt from the card's config, with this version's code, as a retraining would rebuild them;
the network's weights are written back unchanged (checked here), only the card and the check's
two tensors are new.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from bundle import resave_unchanged

from medenhance.models.card import load_model
from medenhance.triage.data import model_inputs
from medenhance.triage.domain import FIT_CHANGES, FIT_ZOOM, DomainCheck
from medenhance.triage.robustness import rebuilt_split
from medenhance.triage.train import _config_of, fit_inputs

ROOT = Path(__file__).resolve().parents[1]


def main(names: list[str]) -> None:
    for name in names:
        path = ROOT / "src" / "medenhance" / "weights" / f"{name}.safetensors"
        loaded = load_model(path)
        info = loaded.card.extra["triage"]
        data, train, val = rebuilt_split(loaded.card.config)
        inputs = model_inputs(data.images, info)
        fit = fit_inputs(inputs[train], data.images[train], FIT_ZOOM, FIT_CHANGES,
                         _config_of(loaded.card).seed, info)
        domain = DomainCheck.fit(fit, inputs[val])
        info["domain_check"] = domain.card_entry()
        info["smallest_side"] = data.smallest_side
        resave_unchanged(path, loaded, aux=domain.tensors())
        share = float(np.mean(domain.distances(inputs[val]) > domain.limit))
        print(f"{name}: domain check fitted to {len(fit)} images ({len(train)} training images "
              f"and their copies), limit {domain.limit:.2f} ({share:.1%} of {len(val)} "
              f"validation images beyond it); smallest training side {data.smallest_side} px")


if __name__ == "__main__":
    main(sys.argv[1:])
