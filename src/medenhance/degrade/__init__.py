"""Physically motivated degradations to build (clean, degraded) training pairs.

Every function is pure (array in, array out, on the [0, 1] scale, ``(H, W)`` or ``(N, H, W)``) and
draws randomness only from the generator it is given; :mod:`.pipeline` composes them with explicit
seeds and JSON records that replay to the same bytes.
"""

from .compression import jpeg
from .motion import mri_motion, xray_motion_blur
from .noise import estimate_noise_sigma, gaussian, low_field, poisson_gaussian, rician
from .pipeline import (OPS, PRESETS, DegradationRecord, Pipeline, Step, apply_record,
                       degrade_image)
from .resolution import blur, blur_downsample, downsample, resize
from .scatter import scatter

__all__ = ["OPS", "PRESETS", "DegradationRecord", "Pipeline", "Step", "apply_record", "blur",
           "blur_downsample", "degrade_image", "downsample", "estimate_noise_sigma", "gaussian",
           "jpeg", "low_field", "mri_motion", "poisson_gaussian", "resize", "rician", "scatter",
           "xray_motion_blur"]
