"""Compare test images with references: pairing by name, metrics per image, summaries with CIs.

Metrics are computed on the *reference's* [0, 1] scale: the test image's pixels are mapped back to
stored values with its own window and forward with the reference's, so two files with different
windows (e.g. a 12-bit DICOM and its derived copy) are compared in the same units. For an 8-bit
reference this is the usual "PSNR with data range 255".
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from . import metrics as M
from .errors import DatasetError, InvalidImageError, MedEnhanceError
from .image import MedicalImage
from .io import find_images, read_image, stem

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("psnr", "ssim", "ms_ssim", "rmse", "mae")
#: The values a metric's mean can take: a Student-t interval of few images reaches past them
#: (SSIM [-0.25, 1.72] for two images), and is cut there.
RANGES = {"ssim": (-1.0, 1.0), "ms_ssim": (-1.0, 1.0), "mse": (0.0, math.inf),
          "rmse": (0.0, math.inf), "mae": (0.0, math.inf), "seconds": (0.0, math.inf)}


def on_reference_scale(reference: MedicalImage, test: MedicalImage) -> np.ndarray:
    """``test``'s pixels re-expressed on ``reference``'s [0, 1] scale (float64)."""
    if reference.shape != test.shape:
        raise InvalidImageError(f"{test.meta.source_path}: size {test.shape} differs from the "
                                f"reference {reference.shape} ({reference.meta.source_path})")
    values = test.values()
    w = reference.meta.window
    unit = (values - w.low) / w.span
    unit = 1.0 - unit if w.invert else unit
    # Stored values of another scale (an 8-bit copy of a 16-bit reference, a .npy on [0, 1]
    # beside a DICOM) gave 4.9 dB or -68 dB as if measured: refused. Values far off the
    # reference's window are; so is, between files stored in different types, a span under a
    # tenth of the reference's (a file stored alike is scored, however flat: a broken model).
    ref_span, test_span = float(np.ptp(reference.pixels)), float(np.ptp(unit))
    alike = ((test.meta.stored_dtype, test.meta.bits_stored)
             == (reference.meta.stored_dtype, reference.meta.bits_stored))
    if float(unit.min()) < -1.0 or float(unit.max()) > 2.0 or (
            not alike and ref_span > 0 and test_span < 0.1 * ref_span):
        def kind(image: MedicalImage) -> str:
            bits = f"{image.meta.bits_stored}-bit " if image.meta.bits_stored else ""
            return f"{bits}{image.meta.stored_dtype} {image.meta.source_format}"

        raise InvalidImageError(
            f"{test.meta.source_path}: its stored values ({values.min():.6g} to "
            f"{values.max():.6g}, {kind(test)}) are not on the scale of the reference "
            f"{reference.meta.source_path} ({w.low:.6g} to {w.high:.6g}, {kind(reference)}): "
            "compare files stored alike (the same format and bit depth)")
    return unit


def compare(reference: MedicalImage, test: MedicalImage,
            names: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Metrics of ``test`` against ``reference`` (averaged over frames); NaN where undefined.

    MS-SSIM is NaN for images under 176 pixels per side (its five scales do not fit).
    """
    ref = reference.frames().astype(np.float64)
    tst = on_reference_scale(reference, test)
    tst = tst[None] if tst.ndim == 2 else tst
    out: dict[str, float] = {}
    for name in names:
        if name not in M.METRICS:
            raise InvalidImageError(f"unknown metric {name!r}; choose from {sorted(M.METRICS)}")
        func = M.METRICS[name][0]
        try:
            out[name] = float(np.mean(func(ref, tst, data_range=1.0)))
        except InvalidImageError:
            if name != "ms_ssim":
                raise
            out[name] = float("nan")
    return out


@dataclass
class Pair:
    name: str
    reference: Path
    test: Path


def pair_by_name(reference_dir: Path, test_dir: Path) -> tuple[list[Pair], list[str]]:
    """Match files of two folders by relative path without suffix; returns pairs and problems
    (a reference without a test file, and files that share a name with another in their folder,
    which cannot be paired: ``b.png`` and ``b.npy``)."""
    problems: list[str] = []

    def by_name(folder: Path) -> dict[str, Path]:
        named: dict[str, list[Path]] = {}
        for p in find_images([folder]):
            named.setdefault(str(p.relative_to(folder).with_name(stem(p))), []).append(p)
        for files in named.values():
            if len(files) > 1:
                problems.append(f"{files[0]}: {len(files)} files of this name ("
                                f"{', '.join(f.name for f in files)}); none of them is paired")
        return {k: v[0] for k, v in named.items() if len(v) == 1}

    refs, tests = by_name(reference_dir), by_name(test_dir)
    pairs = [Pair(k, refs[k], tests[k]) for k in sorted(refs) if k in tests]
    problems += [f"{refs[k]}: no file of that name in {test_dir}" for k in sorted(refs)
                 if k not in tests]
    if not pairs:
        raise DatasetError(f"no file names in common between {reference_dir} and {test_dir}")
    return pairs, problems


@dataclass
class Evaluation:
    """Per-image rows, failures and the metric names used."""

    rows: list[dict[str, object]]
    failures: list[str]
    metrics: tuple[str, ...]

    def summary(self) -> list[dict[str, object]]:
        return summarize(self.rows, self.metrics)


def evaluate_folders(reference_dir: str | Path, tests: dict[str, str | Path], *,
                     metrics: Sequence[str] = DEFAULT_METRICS,
                     progress: Callable[[Iterable[Pair]], Iterable[Pair]] | None = None,
                     only: dict[str, set[str]] | None = None) -> Evaluation:
    """Evaluate one or more test folders (``{method: folder}``) against a reference folder.

    Bad or missing files are listed in ``failures``; the others are still evaluated. ``only``
    limits a method's pairs to the given names (what a run of the method wrote).
    """
    ref_dir = Path(reference_dir)
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    for method, folder in tests.items():
        pairs, problems = pair_by_name(ref_dir, Path(folder))
        if only is not None and method in only:
            pairs = [p for p in pairs if p.name in only[method]]
            problems = [m for m in problems if "no file of that name" not in m]
        failures.extend(problems)
        iterator = progress(pairs) if progress else pairs
        for pair in iterator:
            try:
                values = compare(read_image(pair.reference), read_image(pair.test), metrics)
            except MedEnhanceError as exc:
                failures.append(str(exc))
                continue
            rows.append({"image": pair.name, "method": method, **values})
    return Evaluation(rows, failures, tuple(metrics))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval (NaNs ignored; CI is NaN for n < 2)."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(arr.mean())
    if arr.size < 2 or np.all(~np.isfinite(arr)):
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, arr.size - 1) * arr.std(ddof=1)
                 / math.sqrt(arr.size))
    return mean, mean - half, mean + half


def summarize(rows: Sequence[dict[str, object]], metrics: Sequence[str]) -> list[dict[str, object]]:
    """One row per method: n, and mean / 95 % CI low / high per metric (Student-t, cut to the
    values the metric can take: :data:`RANGES`)."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    out = []
    for method in methods:
        sel = [r for r in rows if r["method"] == method]
        row: dict[str, object] = {"method": method, "n": len(sel)}
        for name in metrics:
            mean, lo, hi = mean_ci([float(r[name]) for r in sel])  # type: ignore[arg-type]
            least, most = RANGES.get(name, (-math.inf, math.inf))
            lo, hi = max(lo, least), min(hi, most)      # NaN (one image) stays NaN
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = mean, lo, hi
        out.append(row)
    return out


def write_csv(rows: Sequence[dict[str, object]], path: str | Path) -> Path:
    """Write dict rows as CSV (all keys of the first row, in order)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        p.write_text("")
        return p
    with open(p, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return p


def summary_markdown(summary: Sequence[dict[str, object]], metrics: Sequence[str]) -> str:
    """Markdown table: mean [95 % CI] per metric and method."""
    header = "| method | n | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for row in summary:
        cells = []
        for name in metrics:
            mean, lo, hi = (float(row[name]), float(row[f"{name}_ci_low"]),  # type: ignore[arg-type]
                            float(row[f"{name}_ci_high"]))  # type: ignore[arg-type]
            digits = 2 if name == "psnr" else 4
            cells.append("n/a" if math.isnan(mean) else (
                f"{mean:.{digits}f}" + ("" if math.isnan(lo) else
                                        f" [{lo:.{digits}f}, {hi:.{digits}f}]")))
        lines.append(f"| {row['method']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_methods(degraded_dir: str | Path, methods: Sequence[str], output_dir: str | Path, *,
                records_dir: str | Path | None = None, overwrite: bool = False,
                progress: Callable[[list[Path]], Iterable[Path]] | None = None
                ) -> tuple[dict[str, Path], dict[tuple[str, str], float], list[str]]:
    """Run denoising ``methods`` (see :mod:`medenhance.methods`) on every degraded image.

    Outputs go to ``output_dir/METHOD/NAME`` in the input's format. When ``records_dir`` holds
    ``NAME.json`` degradation records (written by ``medenhance degrade``), classical methods are
    told the true noise parameters. Returns the output folder per method, the seconds per
    ``(method, image name)`` and the failures.
    """
    from .degrade.pipeline import DegradationRecord
    from .io import write_image
    from .methods import get_method, noise_model_from_record

    src = Path(degraded_dir)
    runners = [get_method(m) for m in methods]
    folders = {r.name: Path(output_dir) / r.name.replace("/", "_") for r in runners}
    seconds: dict[tuple[str, str], float] = {}
    failures: list[str] = []
    files = find_images([src])
    if not overwrite:
        # An earlier run's output of an input of this run (by name without suffix, as outputs
        # and references are paired) would be scored in its place, or leave both unpaired.
        names = {str(p.relative_to(src).with_name(stem(p))) for p in files}
        for folder in folders.values():
            earlier = find_images([folder], errors=[]) if folder.is_dir() else []
            for old in earlier:
                if str(old.relative_to(folder).with_name(stem(old))) in names:
                    raise MedEnhanceError(f"{old}: already exists (an earlier run's output; "
                                          "pass --overwrite to replace it, or choose another "
                                          "-o)")
    for path in (progress(files) if progress else files):
        rel = path.relative_to(src)
        name = str(rel.with_name(stem(path)))
        noise = None
        record = Path(records_dir) / (str(rel) + ".json") if records_dir else None
        try:
            if record is not None and record.exists():
                noise = noise_model_from_record(DegradationRecord.load(record))
            image = read_image(path)
            for runner in runners:
                result = runner.apply(image, noise)
                target = folders[runner.name] / rel
                if target.suffix == "" and image.meta.source_format == "dicom":
                    target = target.with_name(target.name + ".dcm")
                write_image(result, target, overwrite=overwrite)
                # Only an output written by this run is scored (see evaluate_folders' ``only``).
                seconds[(runner.name, name)] = runner.seconds[-1]
        except MedEnhanceError as exc:
            failures.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
    return folders, seconds, failures
