"""Does a bundled denoiser move the mean grey level? Offsets on held-out real images.

A denoiser should take noise away and leave the mean grey level where it was: a systematic
offset, small on an 8-bit scale, is several Hounsfield units on a CT spread over its own range
(a user found +9 HU with `mri-denoise` on a NEMA CT slice; measured below too). Run from the
repository root::

    .venv/bin/python bench/mean_offset.py        # writes bench/mean_offset.md

Images: the held-out images of ``bench/denoise.py`` (NIH test split, 512x512 centre crops, for
``xray-denoise``; Nickparvar Testing slices for ``mri-denoise``), each model on its own modality.
Cells: mean of (output - clean image), in grey levels of 255, with a 95 % Student-t interval over
the images; "clean" is the image as read, its noise level estimated as `enhance` does; "σ=25"
adds Gaussian noise (seeded per image), clipped to [0, 1] as a file would hold it, which itself
moves the mean where the image is near black or white (the input's offset is given beside; the
next column leaves out pixels at or below 0.15 in the clean image). Also a smooth ramp from 0.2
to 0.8 (256x256), where nothing is to be removed.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denoise import SHARED, mri_test_images, nih_test_images  # noqa: E402

from medenhance.evaluate import mean_ci  # noqa: E402
from medenhance.inference.enhance import EnhanceOptions, enhance_array  # noqa: E402
from medenhance.models.card import load_model  # noqa: E402


CT = SHARED / "dicom-samples" / "wg04" / "CT1_RLE.dcm"

#: Pixels of the anatomy: brighter than this in the clean image (MR background and the black
#: around a radiograph stay out; noise clipped at black biases them upward).
ANATOMY = 0.15


def offsets(model_name: str, images: list[tuple[str, np.ndarray]], sigma: float | None
            ) -> tuple[list[float], list[float], list[float]]:
    """Mean of (output - clean), of (input - clean), and of (output - clean) over the anatomy,
    per image, grey levels of 255."""
    model = load_model(model_name)
    out, given_offsets, anatomy = [], [], []
    for k, (_, clean) in enumerate(images):
        given = clean
        if sigma is not None:     # clipped to [0, 1] as a file holds it (and as the model needs)
            rng = np.random.default_rng(k)
            given = np.clip(clean + rng.normal(0.0, sigma, clean.shape), 0, 1).astype(np.float32)
        result, _ = enhance_array(given, model, EnhanceOptions())
        change = result.astype(np.float64) - clean
        out.append(float(change.mean() * 255))
        given_offsets.append(float((given.astype(np.float64) - clean).mean() * 255))
        anatomy.append(float(change[clean > ANATOMY].mean() * 255))
    return out, given_offsets, anatomy


def soft_tissue_offset(model_name: str) -> float:
    """Mean change, in HU, of the CT slice's pixels between -100 and 100 HU."""
    import warnings

    from medenhance.inference.enhance import enhance_image
    from medenhance.io import read_image

    image = read_image(CT)
    with warnings.catch_warnings():         # CT through an MR model: the point of the row
        warnings.simplefilter("ignore")
        out = enhance_image(image, model_name)
    before, after = image.values(), out.values()
    tissue = (before > -100) & (before < 100)
    return float((after - before)[tissue].mean())


def cell(values: list[float]) -> str:
    mean, lo, hi = mean_ci(values)
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" if len(values) > 1 else f"{mean:+.3f}"


def main() -> None:
    torch.set_num_threads(2)
    start = time.time()
    ramp = np.tile(np.linspace(0.2, 0.8, 256, dtype=np.float32), (256, 1))
    rows = []
    for model_name, images in (("xray-denoise", nih_test_images(None)),
                               ("mri-denoise", mri_test_images(None))):
        noisy, noisy_input, noisy_anatomy = offsets(model_name, images, 25 / 255)
        rows.append((model_name, len(images), cell(offsets(model_name, images, None)[0]),
                     f"{cell(noisy)} (input: {cell(noisy_input)})", cell(noisy_anatomy),
                     cell(offsets(model_name, [("ramp", ramp)], None)[0])))
    ct_offset = soft_tissue_offset("mri-denoise")
    lines = [
        "# Mean offset of the bundled denoisers",
        "",
        f"Measured in one run on {dt.date.today()} with `python bench/mean_offset.py` on CPU, "
        f"{platform.machine()}, torch {torch.__version__} with 2 threads. Cells: mean of "
        "(output - clean image) in grey levels of 255 [95 % Student-t interval over the "
        "images]; held-out images of `bench/denoise.py`, each model on its own modality.",
        "",
        "| model | images | clean (noise estimated) | Gaussian σ=25, clipped | the same, pixels "
        f"above {ANATOMY} only | smooth ramp 0.2-0.8 |",
        "|---|---|---|---|---|---|",
        *[f"| {m} | {n} | {a} | {b} | {c} | {d} |" for m, n, a, b, c, d in rows],
        "",
        f"On the NEMA WG04 CT slice (`{CT.name}`, not a modality either model was trained on), "
        f"`mri-denoise` changes the pixels between -100 and 100 HU by {ct_offset:+.1f} HU on "
        "average (noise level estimated).",
        "",
        f"Total time {time.time() - start:.0f} s.",
        "",
    ]
    out = Path(__file__).with_name("mean_offset.md")
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
