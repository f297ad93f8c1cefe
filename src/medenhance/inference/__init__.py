"""Running a network over images of any size: tiling with overlap and blending."""

from .tiling import TiledInferer, tiled_apply

__all__ = ["TiledInferer", "tiled_apply"]
