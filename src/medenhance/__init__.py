"""medenhance: denoise medical images, simulate their degradations, and triage them (research
use only)."""

from ._version import __version__
from .errors import MedEnhanceError
from .image import ImageMeta, IntensityWindow, MedicalImage, from_array
from .io import find_images, inspect_image, read_image, write_image

__all__ = ["ImageMeta", "IntensityWindow", "MedEnhanceError", "MedicalImage", "__version__",
           "find_images", "from_array", "inspect_image", "read_image", "write_image"]
