"""One exception hierarchy for every failure a user can cause.

Each message names the file or argument at fault and, where possible, what to do about it.
The CLI turns any :class:`MedEnhanceError` into a single line and a non-zero exit code.
"""

from __future__ import annotations

from os import PathLike


class MedEnhanceError(Exception):
    """Base class of all errors raised on purpose by medenhance."""


def _with_path(path: str | PathLike[str] | None, reason: str) -> str:
    return f"{path}: {reason}" if path is not None else reason


class ImageReadError(MedEnhanceError, ValueError):
    """A file could not be read as an image (not an image, truncated, no pixel data, ...)."""

    def __init__(self, path: str | PathLike[str] | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(_with_path(path, reason))


class UnsupportedImageError(ImageReadError):
    """The file is a valid image, but of a kind medenhance does not process (colour, syntax, ...)."""


class NotAnImageError(ImageReadError):
    """A valid DICOM object that holds no image (a structured report, a presentation state):
    a batch over a PACS export meets these routinely."""


class ImageWriteError(MedEnhanceError, OSError):
    """An image could not be written (target exists, unknown format, unwritable folder, ...)."""

    def __init__(self, path: str | PathLike[str] | None, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(_with_path(path, reason))


class InvalidImageError(MedEnhanceError, ValueError):
    """Pixel values or shapes are unusable (NaN, wrong shape, mismatched sizes, ...)."""


class DegradationError(MedEnhanceError, ValueError):
    """A degradation was given an unknown name or an impossible parameter."""


class DatasetError(MedEnhanceError, ValueError):
    """A dataset folder or manifest is empty, inconsistent or cannot be split as asked."""


class ConfigError(MedEnhanceError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class ModalityWarning(UserWarning):
    """An image of a modality the model was not trained on was given to it: its output may be
    off (the CLI says so in a note of its own)."""
