"""Restoration and triage networks, one file per architecture, built through the registry."""

from . import (autoencoder, classifier, dncnn, drunet, ensemble, fastunet,  # noqa: F401
               ffdnet, wavelet)  # (they register themselves)
from .card import load_model
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "load_model", "register_model"]
