"""Patient splits of labelled triage folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medenhance.errors import ConfigError
from medenhance.triage.data import LabelledImages, split_by_patient


def _images(patients: list[str]) -> LabelledImages:
    n = len(patients)
    return LabelledImages(np.zeros((n, 2, 2), np.float32), np.zeros(n, int),
                          [Path(f"{p}.png") for p in patients], patients, ["x"] * n)


def test_lowest_ids_split_takes_the_lowest_numbers_of_each_series() -> None:
    # Two images of person3; numbers compared as numbers (person10 after person9), and each
    # series (person#, IM-#, NORMAL#-IM-#) gives its own lowest 20 %.
    persons = [f"person{i}" for i in range(1, 11)] + ["person3"]
    ims = [f"IM-{i:04d}" for i in range(100, 200, 10)]
    normal2 = [f"NORMAL2-IM-{i:04d}" for i in range(500, 1500, 100)]
    data = _images(list(reversed(persons + ims + normal2)))
    train, val = split_by_patient(data, 0.2, seed=0, how="lowest-ids")
    held_out = sorted({data.patients[i] for i in val})
    assert held_out == ["IM-0100", "IM-0110", "NORMAL2-IM-0500", "NORMAL2-IM-0600",
                        "person1", "person2"]
    assert not {data.patients[i] for i in train} & set(held_out)
    assert len(train) + len(val) == len(data.patients)
    # The seed plays no part; the random split does depend on it.
    assert np.array_equal(val, split_by_patient(data, 0.2, seed=5, how="lowest-ids")[1])
    assert not np.array_equal(split_by_patient(data, 0.2, 0)[1], split_by_patient(data, 0.2, 5)[1])


def test_random_split_keeps_a_patients_images_together() -> None:
    data = _images([f"p{i // 3}" for i in range(60)])
    train, val = split_by_patient(data, 0.25, seed=1)
    assert len(val) == 15 and not {data.patients[i] for i in train} & {data.patients[i]
                                                                       for i in val}


def test_unknown_val_split_is_a_config_error(tmp_path: Path) -> None:
    from medenhance.triage.train import load_triage_config

    config = tmp_path / "c.yaml"
    config.write_text(f"data: {tmp_path}\nval_split: newest\n")
    with pytest.raises(ConfigError, match="val_split must be random or lowest-ids"):
        load_triage_config(config)
