"""Datasets: preparation of image folders into a manifest with a patient-level split."""

from .prepare import (PrepareOptions, PrepareResult, foreground_fraction, prepare_dataset,
                      read_manifest)

__all__ = ["PrepareOptions", "PrepareResult", "foreground_fraction", "prepare_dataset",
           "read_manifest"]
