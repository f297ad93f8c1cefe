"""The ``medenhance`` command: one sub-command per verb, each a thin layer over the Python API.

Every failure a user can cause prints one line (``error: FILE: reason``) and exits non-zero;
batches go on past bad files and list them at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table

from ._version import __version__
from .errors import MedEnhanceError, ModalityWarning, NotAnImageError

app = typer.Typer(
    name="medenhance", no_args_is_help=True, add_completion=False,
    rich_markup_mode="markdown",
    help="Denoise and triage medical images (DICOM, PNG/TIFF, NIfTI, .npy).\n\n"
         "**Research use only: not for diagnosis.**",
)
# Tables stay readable when piped to a file or a log (Rich assumes 80 columns there), unless
# COLUMNS says how wide.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)
T = TypeVar("T")

RESEARCH_NOTE = "research use only, not for diagnosis"
#: The denoiser `enhance` uses when none is named.
DEFAULT_DENOISER = "xray-denoise"


def track(items: Sequence[T], description: str) -> Iterable[T]:
    """A progress bar with count and ETA (quiet when output is not a terminal)."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=err_console, transient=True, disable=not err_console.is_terminal)
    with progress:
        yield from progress.track(items, total=len(items), description=description)


def _for_the_cli(message: str) -> str:
    """A message of the Python API in the command line's words."""
    return message.replace("pass --overwrite, or overwrite=True in Python, to replace it",
                           "pass --overwrite to replace it")


def fail(message: str, code: int = 1) -> typer.Exit:
    # Messages quote config values and ranges such as "[low, high]", which are not markup.
    err_console.print(f"[red]error:[/red] {escape(_for_the_cli(message))}", highlight=False,
                      soft_wrap=True)
    return typer.Exit(code)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def report_failures(failures: list[str], total: int) -> None:
    """List bad files at the end of a batch and exit non-zero if there were any."""
    if not failures:
        return
    err_console.print(f"[yellow]{len(failures)} of {total} input(s) failed:[/yellow]")
    for line in failures:
        err_console.print(f"  {escape(_for_the_cli(line))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def note_skipped(skipped: list[Path], output: Path | None = None,
                 repeated: list[Path] | None = None) -> None:
    """Say which files in the input folders were left out as not images (e.g. a README), except
    those inside ``output`` (an earlier run's records), and which were given more than once
    (``repeated``: read once)."""
    if repeated:
        shown = ", ".join(str(p) for p in repeated[:3]) + (", ..." if len(repeated) > 3 else "")
        err_console.print(f"note: {len(repeated)} file(s) were given more than once (a folder "
                          f"and a file or sub-folder in it, or two names through a linked "
                          f"folder) and are read once: {escape(shown)}", highlight=False,
                          soft_wrap=True)
    if output is not None:
        out_root = output.resolve()
        skipped = [p for p in skipped if out_root not in p.resolve().parents]
    if not skipped:
        return
    shown = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    err_console.print(f"note: {len(skipped)} file(s) in the input folders are not recognised as "
                      f"images (no known suffix, and not DICOM) and were skipped: "
                      f"{escape(shown)}", highlight=False, soft_wrap=True)


def note_not_images(not_images: list[str]) -> None:
    """Say which DICOM objects were left out as holding no image (a structured report, a
    presentation state: PACS exports mix them with the images)."""
    if not_images:
        err_console.print(f"note: {len(not_images)} DICOM object(s) without an image (reports, "
                          f"presentation states) were skipped, e.g. {escape(not_images[0])}",
                          highlight=False, soft_wrap=True)


def check_output_folder(output: Path, option: str = "-o") -> None:
    """Refuse, before any work, an output folder that is a file or lies under one (each input
    would otherwise fail with "Not a directory")."""
    from .io._files import SUFFIX_FORMATS, check_parent_folder, full_suffix

    if output.exists() and not output.is_dir():
        raise MedEnhanceError(f"{output}: is a file; {option} takes a folder")
    if not output.exists() and full_suffix(output) in SUFFIX_FORMATS:
        # `-o out.png` made a folder called out.png, the image inside it.
        raise MedEnhanceError(f"{output}: {option} takes a folder (each output keeps its "
                              "input's name in it), and this is an image file's name (to "
                              "use it for a folder, create the folder first)")
    check_parent_folder(output)


def note_repeats(repeats: list[str]) -> None:
    """Say which files were left out as copies of an image already read."""
    if repeats:
        err_console.print(f"note: {len(repeats)} file(s) repeat an image already read and were "
                          f"counted once, e.g. {escape(repeats[0])}", highlight=False,
                          soft_wrap=True)


def warn_calibration(model: str, warning: str | None) -> None:
    """Repeat, wherever a triage model is used, what its training said of its calibration."""
    if warning:
        err_console.print(f"[yellow]warning:[/yellow] model {model}: {escape(warning)}",
                          highlight=False, soft_wrap=True)


def warn_population(shifted: float | None) -> None:
    """Warn when a batch as a whole lies beyond the validation studies' distances
    (:func:`.triage.score.population_shift`)."""
    if shifted is not None:
        err_console.print(f"[yellow]warning:[/yellow] {shifted:.0%} of these studies lie farther "
                          "from the training images than 90 % of the validation studies did: as "
                          "a group they do not look like the population the model was trained "
                          "on (another hospital, age group, protocol or modality?), so its "
                          "scores and threshold may not hold for them", highlight=False)


class _OneLineHandler(logging.Handler):
    """Log records as the CLI's own notes are printed ("warning: ..."), not padded in columns."""

    def emit(self, record: logging.LogRecord) -> None:
        colour = "yellow" if record.levelno >= logging.WARNING else "dim"
        err_console.print(f"[{colour}]{record.levelname.lower()}:[/{colour}] "
                          f"{escape(self.format(record))}", highlight=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"medenhance {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[_OneLineHandler()], force=True)
    logging.captureWarnings(True)
    # A warning names its file and reason, like an error; the line of our code that raised it
    # says nothing to the user.
    warnings.formatwarning = lambda message, *_args, **_kwargs: str(message)
    # pydicom logs decoder exceptions with tracebacks; our own one-line errors say the same.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------------------- info
@app.command()
def info(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
) -> None:
    """Describe image files: modality, size, frames, bits, photometric, spacing, syntax.

    Example: `medenhance info samples/`
    """
    from .io import find_images, inspect_image

    failures: list[str] = []
    skipped: list[Path] = []
    repeated: list[Path] = []
    files = find_images(paths, errors=failures, skipped=skipped, repeated=repeated)
    # The key column folds instead of ending in "…": rows must stay tellable apart when narrow.
    table = Table(Column("file", overflow="fold"), "format", "modality", "size", "frames", "bits",
                  "photometric", "spacing", "transfer syntax", show_lines=False)
    not_images: list[str] = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                i = inspect_image(f)
        except NotAnImageError as exc:
            not_images.append(str(exc))
            continue
        except MedEnhanceError as exc:
            failures.append(str(exc))
            continue
        table.add_row(str(f), i.format, i.modality, f"{i.rows} x {i.columns}", str(i.frames),
                      i.bits_stored, i.photometric, i.pixel_spacing, i.transfer_syntax)
    if table.row_count:
        console.print(table)
    note_skipped(skipped, repeated=repeated)
    note_not_images(not_images)
    report_failures(failures, len(files) - len(not_images)
                    + sum(1 for m in failures if "no such" in m))


# ------------------------------------------------------------------------------------ degrade
def _file_seed(seed: int, name: str) -> int:
    """Per-file seed: independent of the order and number of files in the batch."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _distinct_tails(paths: Iterable[Path]) -> dict[Path, Path]:
    """Each path's shortest tail (its name, then parent/name, ...) that no other path of the
    list ends with: `a/images` and `b/images` give `a/images` and `b/images`, `scans` gives
    `scans`. Paths are made absolute without resolving links, so a link keeps its own name."""
    parts = {p: Path(os.path.abspath(p)).parts[1:] or ("root",) for p in paths}
    tails = {}
    for p, own in parts.items():
        for k in range(1, len(own) + 1):
            if not any(q != p and other[-k:] == own[-k:] for q, other in parts.items()):
                break
        tails[p] = Path(*own[-k:])
    return tails


def _relative_names(inputs: list[Path], files: list[Path]) -> list[Path]:
    """Output names: a file's path inside the input folder it was found in, under that
    folder's own name when several inputs are given (`a/ b/ -o out` gives out/a/..., out/b/...,
    so that files of the same name in both do not collide; `x/images y/images` gives
    out/x/images/..., out/y/images/...); a file given itself, its name (with as many of its
    folders as tell it from another given file of that name)."""
    roots = [r for r in inputs if r.is_dir()]
    root_of = {f: next((r for r in roots if r in f.parents), None) for f in files}
    folder_names = _distinct_tails(roots) if len(inputs) > 1 else {}
    alone = [f for f in files if root_of[f] is None]
    file_names = _distinct_tails(alone)
    names = []
    for f in files:
        root = root_of[f]
        if root is None:
            names.append(file_names[f])
        elif len(inputs) > 1:
            names.append(folder_names[root] / f.relative_to(root))
        else:
            names.append(f.relative_to(root))
    return names


def _outside(files: list[Path], inputs: list[Path], output: Path
             ) -> tuple[list[Path], list[Path]]:
    """Files not under ``output`` and their names relative to the input folder they came from.

    Never read our own earlier outputs back as inputs (e.g. `degrade scans -o scans/pairs`).
    """
    out_root = output.resolve()
    kept = [f for f in files if out_root not in f.resolve().parents]
    if files and not kept:
        raise fail(f"{output}: every input lies inside the output folder; choose another one")
    if len(kept) < len(files):
        err_console.print(f"[yellow]note:[/yellow] {len(files) - len(kept)} file(s) inside the "
                          f"output folder {output} skipped (earlier outputs are not inputs)",
                          highlight=False)
    return kept, _relative_names(inputs, kept)


def _for_each_file(files: list[Path], names: list[Path], description: str, output: Path,
                   targets_of: Callable[[Path], tuple[Path, ...]],
                   process: Callable[[Path, tuple[Path, ...]], None], overwrite: bool
                   ) -> tuple[int, list[str]]:
    """Run ``process(file, targets)`` per file after checking that no target is the input or an
    existing file (unless ``overwrite``); returns the count done and one-line failures."""
    from .io import full_suffix

    failures: list[str] = []
    not_images: list[str] = []
    done = 0
    written: dict[Path, Path] = {}       # target -> the input it was written from in this run
    taken = set(names)
    current: Path | None = None          # the input whose outputs are being written
    try:
        for f, name in track(list(zip(files, names, strict=True)), description):
            if full_suffix(name) == "":      # UID-named DICOM files have no suffix; ours get one
                name = _free_name(name, ".dcm", taken)
            targets = targets_of(name)
            try:
                for target in targets:  # check all before writing any
                    if target.resolve() == f.resolve():
                        raise MedEnhanceError(f"{target}: refusing to overwrite the input file")
                    if target.resolve() in written:
                        raise MedEnhanceError(
                            f"{target}: already written in this run from "
                            f"{written[target.resolve()]} (two inputs of the same name: run "
                            "them one at a time, each with its own -o)")
                    if target.exists() and not overwrite:
                        raise MedEnhanceError(f"{target}: file exists (pass --overwrite to "
                                              "replace it)")
                current = f
                process(f, targets)
                current = None
                written.update({t.resolve(): f for t in targets})
                done += 1
            except NotAnImageError as exc:
                not_images.append(str(exc))
            except MedEnhanceError as exc:
                message = str(exc)
                failures.append(message if str(f) in message or str(output) in message
                                else f"{f}: {message}")
            except OSError as exc:
                failures.append(f"{f}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        # Each file is written whole or not at all (atomic_write), but an input may have
        # several outputs (degrade: degraded, clean, record): name the one in progress.
        err_console.print(f"interrupted: {done} of {len(files)} input(s) done, their outputs "
                          f"in {output}/", highlight=False, soft_wrap=True)
        if current is not None:
            err_console.print(f"  {current} was in progress: some of its outputs may be "
                              "written and others not (run it again with --overwrite)",
                              highlight=False, soft_wrap=True)
        if failures:
            err_console.print(f"[yellow]{len(failures)} input(s) failed before:[/yellow]")
        for line in failures:
            err_console.print(f"  {escape(_for_the_cli(line))}", highlight=False,
                              soft_wrap=True)
        raise typer.Exit(130) from None
    note_not_images(not_images)
    return done, failures


def _free_name(name: Path, suffix: str, taken: set[Path]) -> Path:
    """``name`` with ``suffix`` added, numbered when another input already has that name (a
    suffix-less `X` beside `X.dcm`)."""
    candidate, n = name.with_name(name.name + suffix), 1
    while candidate in taken:
        candidate, n = name.with_name(f"{name.name}_{n}{suffix}"), n + 1
    taken.add(candidate)
    return candidate


@app.command()
def degrade(
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Clean image files or folders.", show_default=False)] = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output folder (it gets degraded/, clean/ and records/).")] = Path(
        "pairs"),
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="Named degradation (see --list-presets).")] = None,
    pipeline: Annotated[Path | None, typer.Option(
        help="JSON/YAML pipeline file instead of a preset.")] = None,
    replay: Annotated[Path | None, typer.Option(
        help="Replay one recorded degradation (.json from records/) on every input.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed gives the same pixels.")
                    ] = 0,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing output files.")] = False,
    list_presets: Annotated[bool, typer.Option("--list-presets",
                                               help="List the presets and exit.")] = False,
    split: Annotated[str | None, typer.Option(
        help="Only this split (train, val or test) of a prepared dataset given as input (its "
             "folder or manifest.csv): the held-out test images to evaluate on.",
        show_default=False)] = None,
) -> None:
    """Simulate degradations to make (clean, degraded) training pairs.

    Writes `OUT/clean/NAME` (a copy of the input), `OUT/degraded/NAME` (same format and units)
    and `OUT/records/NAME.json` (parameters and seeds, replayable with `--replay`).

    Examples:

    * `medenhance degrade samples/xray_chest_nih_00009128_000.png -o pairs --preset xray-lowdose`
    * `medenhance degrade scans/ -o pairs --preset mri-rician --seed 7`
    * `medenhance degrade --list-presets`
    * `medenhance degrade data/mysite --split test -o test-pairs --preset xray-lowdose`: the
    test split of a `prepare`d dataset, for `medenhance evaluate -r test-pairs/clean -d
    test-pairs/degraded -m MODEL`
    * `medenhance degrade scans/ -o pairs --pipeline mine.yaml`, with `mine.yaml` a list of steps,
    each an `op`, its `params` (a value or a range: `{uniform: [a, b]}`, `loguniform`, `int`,
    `choice`) and optionally `p`, the chance it applies; the sigma of gaussian and rician noise
    is on the image's [0, 1] scale (25 grey levels of 255: 0.098):

    `[{op: gaussian, params: {sigma: {uniform: [0.02, 0.1]}}}, {op: jpeg, params: {quality:
    60}, p: 0.5}]`

    Steps: gaussian (sigma), poisson_gaussian (photons, electronic_sigma), rician (sigma),
    low_field (field_from, field_to), blur (sigma), downsample (scale), blur_downsample (scale),
    mri_motion (max_shift, n_movements), xray_motion_blur (length, angle), scatter (fraction,
    sigma), jpeg (quality).
    """
    from .degrade import PRESETS, DegradationRecord, Pipeline, degrade_image
    from .io import find_images, read_image, write_image
    from .io._files import atomic_write

    if list_presets:
        table = Table("preset", "modality", "what it simulates")
        for name, spec in PRESETS.items():
            table.add_row(name, spec["modality"], spec["description"])
        console.print(table)
        return
    if not inputs:
        raise fail("give the clean images to degrade (files or folders)", code=2)
    skipped: list[Path] = []
    repeated: list[Path] = []
    missing: list[str] = []
    try:
        check_output_folder(output)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    chosen = [x for x in (preset, pipeline, replay) if x is not None]
    if len(chosen) != 1:
        raise fail("give exactly one of --preset, --pipeline or --replay "
                   "(--list-presets shows the presets)")
    try:
        if replay is not None:
            record = DegradationRecord.load(replay)
            pipe = None
        else:
            pipe = Pipeline.from_preset(preset) if preset else Pipeline.from_file(pipeline)  # type: ignore[arg-type]
        if split is not None:
            inputs, only = _split_of(inputs, split)
        # A path that is not there is one failure of the batch, listed at the end.
        files = find_images(inputs, skipped=skipped, repeated=repeated, errors=missing)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    if split is not None:
        files = [f for f in files if f.resolve() in only]
    else:
        note_skipped(skipped, output, repeated)
    files, names = _outside(files, inputs, output)

    def targets_of(name: Path) -> tuple[Path, ...]:
        return (output / "degraded" / name, output / "clean" / name,
                output / "records" / name.with_name(name.name + ".json"))

    def process(f: Path, targets: tuple[Path, ...]) -> None:
        image = read_image(f)
        name = targets[0].relative_to(output / "degraded")
        if pipe is not None:
            degraded, rec = degrade_image(image, pipe, _file_seed(seed, str(name)))
        else:
            degraded, rec = degrade_image(image, record)
        rec.extra["source"] = str(f)
        write_image(degraded, targets[0], overwrite=overwrite)
        atomic_write(targets[1], lambda tmp: shutil.copyfile(f, tmp), overwrite=overwrite)
        atomic_write(targets[2], lambda tmp: tmp.write_text(rec.to_json()), overwrite=overwrite)

    done, failures = _for_each_file(files, names, "degrading", output, targets_of, process,
                                    overwrite)
    if done:                             # nothing done: the failures below say why
        console.print(f"degraded {done} image(s) into {output}/degraded (clean copies in "
                      f"{output}/clean, records in {output}/records)")
    report_failures(missing + failures, len(files) + len(missing))


def _split_of(inputs: list[Path], split: str) -> tuple[list[Path], set[Path]]:
    """The folders of the prepared datasets ``inputs`` (folders or manifest.csv files) and the
    resolved paths of their images in ``split``."""
    from .data.prepare import read_manifest
    from .triage.data import manifest_of

    folders, only = [], set()
    for given in inputs:
        manifest = manifest_of(given)
        if manifest is None or not manifest.is_file():
            raise MedEnhanceError(f"{given}: --split takes a prepared dataset (the folder "
                                  "`medenhance prepare` wrote, or its manifest.csv)")
        rows = read_manifest(manifest)
        splits = sorted({r.get("split", "") for r in rows})
        chosen = [r for r in rows if r.get("split") == split]
        if not chosen:
            raise MedEnhanceError(f"{manifest}: no image in split {split!r} (its splits: "
                                  f"{', '.join(splits) or 'none'})")
        folders.append(manifest.parent)
        only |= {(manifest.parent / r["path"]).resolve() for r in chosen}
    return folders, only


# ----------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    reference: Annotated[Path, typer.Option("--reference", "-r",
                                            help="Folder of reference (clean) images.")],
    test: Annotated[list[str] | None, typer.Option(
        "--test", "-t", help="Folder to compare; repeat for several methods. NAME=DIR sets the "
                             "method's name (default: the folder's name).")] = None,
    degraded: Annotated[Path | None, typer.Option(
        "--degraded", "-d", help="Folder of degraded images to run --method on (and to score "
                                 "as 'degraded').")] = None,
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="Run on --degraded and score: nlm, bm3d (needs the [eval] "
                               "extra) or a model name/checkpoint; repeatable.")] = None,
    records: Annotated[Path | None, typer.Option(
        help="Degradation records (default: `records/` beside --degraded) that tell NLM and "
             "BM3D the true noise (sigma, photons, Rician).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the CSV tables.")] =
    Path("evaluation"),
    metric: Annotated[list[str] | None, typer.Option(
        help="Metrics to compute (default psnr, ssim, ms_ssim, rmse, mae).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier evaluation and method outputs in --output.")
                         ] = False,
) -> None:
    """Compare images with references, paired by file name; optionally run methods first.

    Writes `per_image.csv`, `summary.csv` and `summary.md` (mean and 95 % CI per metric and
    method; with `--method` also seconds per image) to the output folder, method outputs to
    `OUT/outputs/METHOD/`, and prints the summary. `medenhance report OUT` turns it into a report.

    Examples:

    * `medenhance evaluate -r pairs/clean -t pairs/degraded -o eval/`
    * `medenhance evaluate -r pairs/clean -d pairs/degraded -m nlm -m bm3d -m xray-denoise -o eval/`
    """
    from .evaluate import (DEFAULT_METRICS, evaluate_folders, run_methods, summarize,
                           summary_markdown, write_csv)

    tests: dict[str, str] = {}
    for item in test or []:
        name, _, folder = item.rpartition("=") if "=" in item else ("", "", item)
        label = name or Path(folder).name
        if label in tests:
            raise fail(f"two --test folders are both called {label!r}; name them with NAME=DIR")
        tests[label] = folder
    from .metrics import METRICS

    metrics = tuple(dict.fromkeys(metric)) if metric else DEFAULT_METRICS
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise fail(f"unknown metric(s) {', '.join(unknown)}; choose from "
                   f"{', '.join(sorted(METRICS))}")
    method = list(dict.fromkeys(method)) if method else method   # -m nlm -m nlm runs it once
    if records is not None and not records.is_dir():
        raise fail(f"{records}: --records must be a folder of degradation records")
    if method and degraded is None:
        raise fail("--method needs --degraded (the images to run it on)")
    if not tests and degraded is None:
        raise fail("give --test folders, or --degraded with --method")
    # A --test label that a method or the degraded row also takes would silently lose its row.
    taken = {*(method or []), *(["degraded"] if degraded is not None else [])}
    if clash := sorted(set(tests) & taken):
        raise fail(f"--test {clash[0]!r}: a method or the --degraded row has that name; name "
                   "the folder otherwise with NAME=DIR")
    seconds: dict[tuple[str, str], float] = {}
    folders: dict[str, Path] = {}      # method outputs this run makes
    failures: list[str] = []
    try:
        taken = [n for n in ("evaluation.json", "per_image.csv", "summary.csv", "summary.md")
                 if (output / n).exists()]
        if taken and not overwrite:
            raise MedEnhanceError(f"{output}: already holds an evaluation's files "
                                  f"({', '.join(taken)}; pass --overwrite to replace them, or "
                                  "choose another -o)")
        if not reference.is_dir():
            raise MedEnhanceError(f"{reference}: reference must be a folder")
        for folder in [*tests.values(), *([degraded] if degraded else [])]:
            if not Path(folder).is_dir():
                raise MedEnhanceError(f"{folder}: test must be a folder")
        if degraded is not None:
            tests.setdefault("degraded", str(degraded))
            if method:
                recs = records or degraded.parent / "records"
                folders, seconds, failures = run_methods(
                    degraded, method, output / "outputs", records_dir=recs, overwrite=overwrite,
                    progress=lambda files: track(files, f"running {', '.join(method)}"))
                for name, folder in folders.items():
                    if any(m == name for m, _ in seconds):   # else its failures say why
                        tests[name] = str(folder)
        # A method folder is scored on what this run wrote: an earlier run's files there (of
        # images not in this -d) are not this evaluation's. Nothing is ever deleted.
        only = {name: {n for m, n in seconds if m == name} for name in folders}
        result = evaluate_folders(reference, tests, metrics=metrics, only=only,
                                  progress=lambda pairs: track(pairs, "evaluating"))
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    failures += result.failures
    if not result.rows:
        report_failures(failures, len(failures))
        raise fail("no image could be evaluated")
    if seconds:
        metrics = (*metrics, "seconds")
        for row in result.rows:
            row["seconds"] = seconds.get((str(row["method"]), str(row["image"])), float("nan"))
    summary = summarize(result.rows, metrics)
    write_csv(result.rows, output / "per_image.csv")
    write_csv(summary, output / "summary.csv")
    md = summary_markdown(summary, metrics)
    (output / "summary.md").write_text(md)
    def where(folder: Path | str) -> str:
        """A folder inside the evaluation as a path relative to it (so that the evaluation can
        be moved or reported from anywhere); any other as an absolute path."""
        folder = Path(folder).resolve()
        inside = output.resolve() in folder.parents
        return str(folder.relative_to(output.resolve()) if inside else folder)

    (output / "evaluation.json").write_text(json.dumps(
        {"reference": where(reference), "degraded": where(degraded) if degraded else None,
         "methods": {name: where(folder) for name, folder in tests.items()},
         "metrics": list(metrics)}, indent=2))
    outputs = output / "outputs"
    others = sorted(d.name for d in outputs.iterdir() if d.is_dir() and d not in
                    folders.values()) if outputs.is_dir() else []
    if others:
        err_console.print(f"note: {outputs}/ also holds {', '.join(others)}, not part of this "
                          "evaluation (an earlier run's outputs; remove them if no longer "
                          "needed)", highlight=False, soft_wrap=True)
    table = Table("method", "n", *metrics, title="mean [95 % CI]")
    for line in md.splitlines()[2:]:
        table.add_row(*[c.strip() for c in line.strip("|").split("|")])
    console.print(table)
    console.print(f"tables written to {output}/ (per_image.csv, summary.csv, summary.md)")
    report_failures(failures, len(result.rows) + len(failures))


# ------------------------------------------------------------------------------------ prepare
def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace(" ", "").split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise typer.BadParameter(f"expected HEIGHTxWIDTH (e.g. 512x400) or one number, got {text!r}")


@app.command()
def prepare(
    sources: Annotated[list[Path], typer.Argument(help="Folders (or files) of images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output dataset folder.")],
    size: Annotated[str | None, typer.Option(help="Output size HEIGHTxWIDTH, e.g. 512x400, or "
                                                  "one number for a square.")] = None,
    fit: Annotated[str, typer.Option(help="'resize' (stretch) or 'crop' (scale, centre-crop).")]
    = "resize",
    min_foreground: Annotated[float, typer.Option(
        help="Drop images whose foreground fraction is below this (0-1).")] = 0.6,
    background_level: Annotated[float, typer.Option(
        help="Pixels at or below this ([0, 1] scale) count as background.")] = 0.04,
    rotate_portrait: Annotated[bool, typer.Option(
        "--rotate-portrait", help="Rotate landscape images to portrait.")] = False,
    split: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the patient split.")] = 0,
    patient_regex: Annotated[str | None, typer.Option(
        help="Regular expression whose first group is the patient id in the file name, "
             "e.g. '(person\\d+)_'.")] = None,
    patient_csv: Annotated[Path | None, typer.Option(help="CSV with file -> patient id.")] = None,
    csv_file_column: Annotated[str, typer.Option(help="File-name column of --patient-csv.")] =
    "Image Index",
    csv_patient_column: Annotated[str, typer.Option(help="Patient column of --patient-csv.")] =
    "Patient ID",
    image_format: Annotated[str, typer.Option("--format", help="'npy' (float32) or 'png' "
                                                               "(16-bit).")] = "npy",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing dataset.")] = False,
) -> None:
    """Prepare a dataset: filter, rotate, resize, and split train/val/test by patient.

    A file's patient id comes from `--patient-csv`, else `--patient-regex`, else its DICOM
    PatientID; a file with none is its own patient.

    Example: `medenhance prepare ../shared/data/xray-chest-nih14-1024/images -o data/nih
    --size 512 --patient-csv ../shared/data/xray-chest-nih14-1024/labels.csv`
    """
    from .data import PrepareOptions, prepare_dataset

    try:
        fractions = tuple(float(v) for v in split.split(","))
    except ValueError:
        raise fail(f"--split: expected three fractions like 0.8,0.1,0.1, got {split!r}") from None
    try:
        opts = PrepareOptions(
            min_foreground=min_foreground, background_level=background_level,
            rotate_portrait=rotate_portrait, size=_parse_size(size), fit=fit,
            split=fractions, seed=seed, patient_regex=patient_regex,  # type: ignore[arg-type]
            patient_csv=patient_csv, csv_file_column=csv_file_column,
            csv_patient_column=csv_patient_column, output_format=image_format,
            overwrite=overwrite)
        result = prepare_dataset(sources, output, opts,
                                 progress=lambda files: track(files, "preparing"))
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    counts = result.counts()
    patients = {s: len({r["patient_id"] for r in result.kept if r["split"] == s})
                for s in counts}
    table = Table("split", "images", "patients")
    for s, n in counts.items():
        table.add_row(s, str(n), str(patients[s]))
    console.print(table)
    console.print(f"kept {len(result.kept)}, excluded {len(result.excluded)} "
                  f"(see {output}/excluded.csv); manifest: {result.manifest}")
    empty = [s for s, share in zip(counts, fractions) if share > 0 and counts[s] == 0]
    if empty and result.kept:
        err_console.print(f"[yellow]warning:[/yellow] no image in the {' and '.join(empty)} "
                          f"split: {_count(sum(patients.values()), 'patient is', 'patients are')} "
                          "too few for these fractions (training needs train and val images)",
                          highlight=False)
    note_not_images(result.not_images)
    report_failures(result.unreadable, result.files - len(result.not_images))


# ------------------------------------------------------------------------------------ enhance
@app.command()
def enhance(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path(
        "enhanced"),
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Bundled or user model name (see `medenhance models`) or a "
                              ".safetensors checkpoint [default: xray-denoise]",
        show_default=False)] = None,
    noise_level: Annotated[float | None, typer.Option(
        help="Noise sigma in grey levels of 255 (e.g. 25; 0 leaves images unchanged); default: "
             "estimated per image.")] = None,
    tile: Annotated[int, typer.Option(help="Tile side in pixels; 0 processes whole images.")] = 512,
    overlap: Annotated[int | None, typer.Option(
        help="Pixels shared by neighbouring tiles [default: 64, less for tiles under 144]",
        show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Denoise images with a trained model; each output has the input's format and units.

    Folders are searched recursively and their layout is kept under the output folder (under
    each folder's name when several inputs are given). A DICOM output is a derived image (new
    UIDs, one new series per source series, DERIVED\\SECONDARY, the model in
    DerivationDescription).

    Examples:

    * `medenhance enhance samples/xray_chest_nih_00009128_000.png -o out/`
    * `medenhance enhance scans/ -o out/ --model mri-denoise --noise-level 10`
    """
    from .inference.enhance import EnhanceOptions, enhance_image
    from .io import find_images, read_image, write_image
    from .methods import load_enhancement_model
    from .train.loop import pick_device

    skipped: list[Path] = []
    repeated: list[Path] = []
    missing: list[str] = []
    try:
        dev = str(pick_device(device)) if device == "auto" else device
        if dev not in ("cpu", "cuda"):
            raise MedEnhanceError(f"--device must be cpu, cuda or auto, got {device!r}")
        import torch

        if dev == "cuda" and not torch.cuda.is_available():
            raise MedEnhanceError("--device cuda: this torch has no CUDA device (use cpu or auto)")
        if noise_level is not None and not 0 <= noise_level < 255:
            raise MedEnhanceError(f"--noise-level is in grey levels of 255 (e.g. 25), from 0 to "
                                  f"below 255; got {noise_level:g}")
        check_output_folder(output)
        opts = EnhanceOptions(noise_level=None if noise_level is None else noise_level / 255.0,
                              tile=tile, overlap=overlap, device=dev)
        opts.validate()
        loaded = load_enhancement_model(model or DEFAULT_DENOISER, device=dev)
        # A path that is not there is one failure of the batch, listed at the end.
        files = find_images(inputs, skipped=skipped, repeated=repeated, errors=missing)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    note_skipped(skipped, output, repeated)
    files, names = _outside(files, inputs, output)

    noted: set[str] = set()              # one note per foreign modality, not one per file
    foreign: dict[str, int] = {}         # ... and how many there were, at the end

    def process(f: Path, targets: tuple[Path, ...]) -> None:
        image = read_image(f)
        modality = loaded.card.foreign_modality(image.meta.modality)
        if modality:
            foreign[modality] = foreign.get(modality, 0) + 1
        if modality and modality not in noted:
            noted.add(modality)
            err_console.print(f"[yellow]note:[/yellow] {f}: modality {modality}, but "
                              f"{loaded.card.name} was trained on {loaded.card.modality} images "
                              "(see `medenhance models` for the others)", highlight=False)
        elif model is None and str(image.meta.modality or "OT").strip().upper() == "OT" \
                and "" not in noted:
            # A PNG says nothing of what it shows: the default, chosen for radiographs, may
            # not be the model for it.
            noted.add("")
            err_console.print(f"[yellow]note:[/yellow] {f}: its file does not say what it shows "
                              f"and no --model was given: {loaded.card.name} (trained on "
                              f"{loaded.card.modality} images) is used; for MR images pass "
                              "-m mri-denoise", highlight=False)
        with warnings.catch_warnings():         # said once above, as a note
            warnings.simplefilter("ignore", ModalityWarning)
            enhanced = enhance_image(image, loaded, opts)
        write_image(enhanced, targets[0], overwrite=overwrite)

    done, failures = _for_each_file(files, names, f"enhancing ({loaded.card.name})", output,
                                    lambda name: (output / name,), process, overwrite)
    if done:
        console.print(f"enhanced {done} image(s) with {loaded.card.name} into {output}/ "
                      f"({RESEARCH_NOTE})")
    if any(n > 1 for n in foreign.values()):     # the notes above named the first of each
        counts = ", ".join(f"{n} {'is' if n == 1 else 'are'} {m}"
                           for m, n in sorted(foreign.items()))
        err_console.print(f"[yellow]note:[/yellow] of the images given, {counts}; "
                          f"{loaded.card.name} was trained on {loaded.card.modality} images",
                          highlight=False)
    report_failures(missing + failures, len(files) + len(missing))


# ------------------------------------------------------------------------------------- models
@app.command()
def models(
    name: Annotated[str | None, typer.Argument(help="Show one model's full card.")] = None,
) -> None:
    """List bundled and user models (user models: `$MEDENHANCE_MODELS`, default
    `~/.medenhance/models`, where `medenhance train` and `train-triage` register them) with their model cards.
    A name finds the bundled model first: a user model "hidden by bundled" is reached by its
    path (`-m ~/.medenhance/models/NAME.safetensors`).

    Examples: `medenhance models` · `medenhance models xray-denoise`
    """
    from .models.card import ModelCard, available_models, resolve_model

    if name is not None:
        try:
            path = resolve_model(name).with_suffix(".json")
            card = ModelCard.from_json(path.read_text(), str(path))
        except MedEnhanceError as exc:
            raise fail(str(exc)) from None
        console.print_json(card.to_json())
        return
    table = Table(Column("name", overflow="fold"), "origin", "task", "modality", "scale",
                  "architecture", "trained on", "validation", title=f"models ({RESEARCH_NOTE})")
    problems: list[str] = []
    listed = available_models(problems)
    bundled = {weights.stem for origin, _, weights in listed if origin == "bundled"}
    for origin, card, weights in listed:
        if origin != "bundled" and weights.stem in bundled:
            # The name finds the bundled model; this one is reached by its path.
            origin = f"{origin}, hidden by bundled"
        data = card.training_data
        sources = [Path(s) for s in data.get("sources", [])]
        # The folder the training images share, as its last two parts: "dataset/split".
        common = Path(os.path.commonpath(sources)) if sources else None
        trained = "/".join(common.parts[-2:]) if common else "?"
        if "images" in data:
            trained += f" ({data['images'].get('train', '?')} train)"
        m = card.metrics
        val = (f"PSNR {m['val_psnr']:.2f} dB (input {m.get('val_psnr_input', float('nan')):.2f}),"
               f" SSIM {m.get('val_ssim', float('nan')):.3f}" if "val_psnr" in m else
               f"AUROC {m['val_auroc']:.3f}, sens {m['val_sensitivity']:.2f}, spec "
               f"{m['val_specificity']:.2f}" if "val_auroc" in m else "")
        # The file name is what --model resolves (the card's name may differ for copied files).
        table.add_row(weights.stem, origin, card.task, card.modality, f"x{card.scale}",
                      card.architecture, trained, val)
    console.print(table)
    for line in problems:
        err_console.print(f"[yellow]not listed:[/yellow] {escape(line)}", highlight=False,
                          soft_wrap=True)


# ------------------------------------------------------------------------------------- report
@app.command()
def report(
    evaluation: Annotated[Path, typer.Argument(help="Folder written by `medenhance evaluate`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder.")] = Path(
        "report"),
    images: Annotated[int, typer.Option(min=1, help="How many images to show.")] = 4,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier report.")] = False,
) -> None:
    """Write a Markdown + HTML report: summary table, per-image figures (reference | degraded |
    methods, zoomed inset, difference maps, metrics in captions) and training curves.

    Example: `medenhance evaluate -r pairs/clean -d pairs/degraded -m bm3d -m xray-denoise -o
    eval/ && medenhance report eval/ -o report/`
    """
    from .report import write_report

    try:
        mine = ["report.md", "report.html", "training_curves.png"]     # and image_NN.png
        taken = [p.name for p in output.glob("*") if p.name in mine
                 or re.fullmatch(r"image_\d+\.png", p.name)] if output.is_dir() else []
        if taken and not overwrite:
            raise MedEnhanceError(f"{output}: already holds a report's files ("
                                  f"{', '.join(sorted(taken)[:3])}"
                                  f"{', ...' if len(taken) > 3 else ''}; pass --overwrite to "
                                  "replace them, or choose another -o)")
        md, page = write_report(evaluation, output, max_images=images)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    console.print(f"report written: {md} and {page} ({RESEARCH_NOTE})")


# -------------------------------------------------------------------------------------- train
@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config (YAML).")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value, e.g. `--set optim.lr=1e-3` (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in the config's output_dir.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start the run in output_dir again, and replace a model registered "
                            "under the config's name.")] = False,
) -> None:
    """Train a model from a YAML config (see `configs/` for the bundled models' configs).

    Writes `config.yaml`, `log.csv`, `loss.png`, `last.pt` and `best.safetensors` + `best.json`
    (weights and model card) to the run folder, and registers the best checkpoint under the
    config's `name` so that `medenhance enhance --model NAME` finds it.

    Examples:

    * `medenhance train -c configs/xray-denoise.yaml --set optim.epochs=5`
    * on your own data (a `medenhance prepare`d dataset): `medenhance train -c
    configs/xray-denoise.yaml --set name=my-xray --set data.manifest=data/mysite/manifest.csv
    --set output_dir=runs/my-xray`
    * fine-tune a model (an epoch must beat it on validation): `--set
    model.init_from=xray-denoise` (a bundled or registered name, a run folder or a checkpoint)
    * go on after Ctrl-C or a time limit: the same command with `--resume`
    * then: `medenhance enhance scans/ -o out -m my-xray`
    """
    from .train.config import load_config
    from .train.loop import fit

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
                        disable=not err_console.is_terminal)
    if resume and overwrite:
        raise fail("give --resume (continue the run) or --overwrite (start it again), not both")
    try:
        cfg = load_config(config, set_ or [])
        console.print(f"training {cfg.name!r} ({cfg.model.name}) -> {cfg.run_dir}/")
        with progress:
            # Before the first batch: reading the data, no loss yet ("0/? loss nan").
            task = progress.add_task("reading the data", total=None, loss="-")

            def step(done: int, total: int, info: dict[str, float]) -> None:
                progress.update(task, completed=done, total=total, loss=f"{info['loss']:.5f}",
                                description=f"epoch {info['epoch']}")

            result = fit(cfg, resume=resume, progress=step, overwrite=overwrite,
                         log=lambda line: progress.console.print(line, highlight=False))
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; continue with --resume (the last finished epoch is saved)",
                   code=130) from None
    if not result.history:
        raise fail(f"no epoch was trained ({result.stopped})")
    if result.best_epoch == 0 and result.start is not None:
        best = result.start
        err_console.print(f"[yellow]warning:[/yellow] no epoch beat the model it started from "
                          f"on validation ({best['val_psnr']:.2f} dB): the checkpoint is that "
                          "model, unchanged", highlight=False)
    else:
        best = result.history[result.best_epoch - 1]
    console.print(f"{result.stopped}; best epoch {result.best_epoch}: validation PSNR "
                  f"{best['val_psnr']:.2f} dB, SSIM {best['val_ssim']:.4f}; checkpoint "
                  f"{result.best}, log {result.run_dir / 'log.csv'}, curves "
                  f"{result.run_dir / 'loss.png'}")
    if best.get("val_psnr_input", float("-inf")) >= best["val_psnr"]:
        # Registered all the same (a first stage, a smoke run), but not as if it were usable.
        err_console.print(f"[yellow]warning:[/yellow] the model makes the validation images "
                          f"worse than they came ({best['val_psnr']:.2f} dB against "
                          f"{best['val_psnr_input']:.2f} dB for the degraded input): train "
                          "longer before using it", highlight=False)


# ------------------------------------------------------------------------------------- triage
@app.command("train-triage")
def train_triage_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Triage config (YAML).")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value, e.g. `--set epochs=3` (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite",
        help="Replace a model already trained into the run folder or registered by name.")
                         ] = False,
) -> None:
    """Train a triage model (supervised or one-class) from a folder of label sub-folders, or from
    a dataset made by `medenhance prepare` (config `data:` its folder or manifest.csv; its train
    and val splits are used as they are, the test split is left for evaluate-triage).

    One-class models train on the normal images only; the labelled validation split (by patient)
    calibrates the score and picks the threshold for the target sensitivity. The model is saved
    in the config's `output_dir` and registered under its `name` in $MEDENHANCE_MODELS (default
    ~/.medenhance/models; `register: false` skips it), so `-m NAME` finds it; a bundled model of
    the same name comes first.

    Example: `medenhance train-triage -c configs/xray-pneumonia.yaml`

    Example: `medenhance train-triage -c configs/xray-pneumonia.yaml --set data=data/cxr --set
    name=my-model --set output_dir=runs/my-model`
    """
    from .triage.train import load_triage_config, train_triage

    try:
        cfg = load_triage_config(config, set_ or [])
        train_triage(cfg, log=lambda line: console.print(line, highlight=False),
                     progress=lambda files: track(files, "reading images"), overwrite=overwrite)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted before an epoch was complete (or a second time): nothing "
                   "saved", 130) from None


def _worklist_path(raw: str) -> Path:
    """The worklist file that ``-o`` names: a folder (existing, or written with a trailing
    separator, as in ``-o results/``) gets ``worklist.csv``; ``-`` stands for standard output."""
    if raw == "-":
        return Path("<stdout>")
    if not raw:
        raise MedEnhanceError("-o: is empty; give the worklist's file name")
    path = Path(raw)
    if raw.endswith(("/", os.sep)) or path.is_dir():
        return path / "worklist.csv"
    return path


@app.command()
def triage(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (any format).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Triage model name or checkpoint.")
                     ] = "xray-pneumonia",
    output: Annotated[str, typer.Option(
        "--output", "-o", help="Worklist CSV to write; a folder (existing, or written with a "
                               "trailing /) gets worklist.csv; - writes it to standard output.")
                      ] = "worklist.csv",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing worklist (and heatmaps).")] = False,
    heatmaps: Annotated[Path | None, typer.Option(
        help="Also write, for every flagged study (out-of-distribution ones included), a PNG of "
             "where its score comes from (wavelet, patch-nn and supervised models) into this "
             "folder.")] = None,
    by_file: Annotated[bool, typer.Option(
        "--by-file", help="One row per file, also for DICOM files of one study.")] = False,
) -> None:
    """Score every study for "likely abnormal" and write a worklist, most urgent first.

    A study is a file, or all DICOM files with the same Study Instance UID; a study of several
    frames or slices scores by its most abnormal frame among those that show the anatomy.
    Columns: `rank`, `path` and `frame` (where that frame is; 0-based), `score` (calibrated probability,
    higher = more likely abnormal), `flag` (1 = read first: at or above the model's stored
    threshold, set for one image, so a study of many frames is flagged more often; also every
    study out of distribution), `ood` (1 = unlike the training images, too small for the model, or
    a DICOM modality the model was not trained on: do not trust the score), `frames`
    (how many showed the anatomy and counted), `files`, `study` (the UID), `note` and `use`
    ("research use only", on every row, so that a row copied out still says it). Unreadable
    files are not fatal: they head the worklist (no score, flag 1) and are listed at the end, and
    the exit status is 1. Copies of a DICOM image (same SOP Instance UID) count once; other
    files showing the same picture are each listed, with a note naming the others.

    Example: `medenhance triage ../shared/data/xray-chest-kermany-224/test -o worklist.csv`

    Example: `medenhance triage ../shared/data/mri-brain-nickparvar/Testing -m mri-triage
    --heatmaps heatmaps/`
    """
    import csv as _csv

    from .io import find_images
    from .io._files import atomic_write, writable_target
    from .triage.score import CSV_NOTE, NOTE, TriageScorer, population_shift, worklist

    failures: list[str] = []
    skipped: list[Path] = []
    repeated: list[Path] = []
    to_stdout = output == "-"
    # With the worklist on standard output, everything said about it goes to standard error.
    say = err_console if to_stdout else console
    try:
        output = _worklist_path(output)
        if not to_stdout:
            writable_target(output, overwrite=overwrite)     # now, not after scoring them all
        if heatmaps is not None and heatmaps.resolve() == output.resolve():
            raise MedEnhanceError(f"{heatmaps}: is also the worklist (-o); --heatmaps takes a "
                                  "folder of its own")
        if heatmaps is not None:
            check_output_folder(heatmaps, "--heatmaps")
        if heatmaps is not None and any(heatmaps.glob("*.png")) and not overwrite:
            raise MedEnhanceError(f"{heatmaps}: already holds PNG files (pass --overwrite to "
                                  "replace them)")
        scorer = TriageScorer(model)
        if heatmaps is not None and not scorer.has_evidence_maps:
            raise MedEnhanceError(f"--heatmaps: model {scorer.model.card.name!r} scores the "
                                  "pooled features of the whole image and has no map of where "
                                  "its score comes from (use a wavelet, patch-nn or supervised "
                                  "model)")
        files = find_images(inputs, errors=failures, skipped=skipped, repeated=repeated)
        note_skipped(skipped, repeated=repeated)
        resolved = {f.resolve() for f in files}
        if not to_stdout and output.resolve() in resolved:
            raise MedEnhanceError(f"{output}: is one of the input images; write the worklist "
                                  "elsewhere")
        if heatmaps is not None and any(f.is_relative_to(heatmaps.resolve()) for f in resolved):
            raise MedEnhanceError(f"{heatmaps}: holds input images; write the heatmaps to "
                                  "another folder")
        repeats: list[str] = []
        unreadable: list[tuple[str, str]] = []
        not_images: list[str] = []
        same_picture: dict[str, str] = {}
        results = worklist(scorer.score_files(files, failures, by_study=not by_file,
                                              progress=lambda f: track(f, "scoring"),
                                              repeats=repeats, unreadable=unreadable,
                                              not_images=not_images, same_picture=same_picture))
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted: no worklist written (it is written once every study is "
                   "scored)", code=130) from None

    pictures: dict[str, list[str]] = {}     # the first file of a picture -> all its files
    for copy, first in same_picture.items():
        pictures.setdefault(first, [first]).append(copy)
    group_of = {f: group for group in pictures.values() for f in group}

    def twins(r) -> list[str]:
        """The files outside study ``r`` that show a picture one of its files shows."""
        own = r.paths or (r.path,)
        return list(dict.fromkeys(o for f in own for o in group_of.get(f, ()) if o not in own))

    def write_rows(fh) -> None:
        w = _csv.writer(fh, lineterminator="\n")
        w.writerow(["rank", "path", "frame", "score", "flag", "ood", "frames", "files",
                    "study", "note", "use"])
        # A study the model could not score must not drop out of the reading: first.
        for i, (path, reason) in enumerate(unreadable, 1):
            w.writerow([i, path, "", "", 1, 1, 0, 1, "", f"unreadable ({reason}): read it",
                        CSV_NOTE])
        for i, r in enumerate(results, len(unreadable) + 1):
            # An out-of-distribution study is read as flagged: a filter on flag == 1 keeps it.
            note = r.reading_note(scorer.model.card.modality)
            if others := twins(r):      # two names (or two patients?) for one picture
                note = "; ".join(filter(None, [note, "same picture as " + ", ".join(others)]))
            w.writerow([i, r.path, r.frame, f"{r.score:.9f}", max(r.flag, r.ood), r.ood,
                        r.frames, r.files, r.study, note, CSV_NOTE])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            write_rows(fh)

    note_repeats(repeats)
    note_not_images(not_images)
    if same_picture:
        copy, first = next(iter(same_picture.items()))
        err_console.print(f"note: {len(same_picture)} file(s) show the same picture as another "
                          f"file (listed, and noted in the worklist), e.g. {escape(copy)} and "
                          f"{escape(first)}", highlight=False, soft_wrap=True)
    # Written even with no study, when files were read (all reports, say): an earlier
    # worklist at -o must not pass for this run's.
    written = bool(results or unreadable or not_images)
    if written and to_stdout:
        write_rows(sys.stdout)
        sys.stdout.flush()
    elif written:
        atomic_write(output, write, overwrite=overwrite)
    flagged = sum(max(r.flag, r.ood) for r in results)
    ood = sum(r.ood for r in results)
    above = sum(r.flag for r in results)
    n_files = sum(r.files for r in results)
    grouped = f" ({n_files} files)" if n_files != len(results) else ""
    where = ("no worklist written" if not written else "worklist on standard output"
             if to_stdout else f"worklist {output}")
    first = f"; the {len(unreadable)} unreadable file(s) head it" if unreadable else ""
    say.print(f"{_count(len(results), 'study', 'studies')}{grouped} scored with "
              f"{scorer.model.card.name}: {flagged} flagged ({above} at or above the threshold "
              f"{scorer.threshold_text}, {ood} out of distribution); {where}{first} ({NOTE})")
    if ood:
        foreign = sorted({r.foreign_modality for r in results if r.foreign_modality})
        n_foreign = sum(1 for r in results if r.foreign_modality)
        of_other = (f" ({n_foreign} of modality {', '.join(foreign)})" if foreign else "")
        their = "its score is" if ood == 1 else "their scores are"
        err_console.print(f"[yellow]warning:[/yellow] {_count(ood, 'study does', 'studies do')} "
                          f"not look like the {scorer.model.card.modality} images the model was "
                          f"trained on{of_other}; {their} not reliable", highlight=False)
    warn_population(population_shift(results, scorer.info))
    warn_calibration(scorer.model.card.name, scorer.calibration_warning)
    if heatmaps is not None:
        from .triage.heatmap import write_heatmaps

        # Every flagged row of the worklist: at or above the threshold, or out of distribution
        # (read as flagged) where there is a picture to show.
        ranked = [(i, r) for i, r in enumerate(results, len(unreadable) + 1)
                  if r.flag or (r.ood and not r.empty)]
        heat_failures: list[str] = []
        try:
            written = write_heatmaps(scorer, ranked, heatmaps, failures=heat_failures,
                                     progress=lambda f: track(f, "heatmaps"))
        except MedEnhanceError as exc:       # the folder itself cannot be written
            heat_failures.append(str(exc))
            written = []
        say.print(f"{len(written)} heatmap(s) of the flagged studies in "
                  f"{heatmaps}/, to look "
                  f"through in {heatmaps / 'index.html'} (left: what the model saw; right: "
                  "where it looked most abnormal, scaled per image)")
        for line in heat_failures:
            err_console.print(f"[yellow]heatmap not written:[/yellow] {escape(line)}",
                              highlight=False, soft_wrap=True)
    report_failures(failures, n_files + len(failures) + len(not_images))
    if heatmaps is not None and heat_failures:
        raise typer.Exit(1)


@app.command("evaluate-triage")
def evaluate_triage(
    folder: Annotated[Path, typer.Argument(
        help="Folder with one sub-folder per label, or a dataset made by `medenhance prepare`.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Triage model name or checkpoint.")
                     ] = "xray-pneumonia",
    normal: Annotated[list[str] | None, typer.Option(
        help="Label folder(s) that are normal (default: the model card's).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Of a dataset made by `prepare`, the split to evaluate [default: test].")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier evaluation in --output.")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the results: summary.json, scores.csv, roc.png, "
                             "scores.png (and robustness.png with --shifts).")
                      ] = Path("triage-eval"),
    minutes: Annotated[float, typer.Option(help="Reading time per study for the worklist "
                                                "simulation.")] = 5.0,
    bootstrap: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for the CIs.")
                         ] = 1000,
    shifts: Annotated[bool, typer.Option(
        "--shifts", help="Also measure AUROC under simulated acquisition changes (exposure, "
                         "contrast, blur, noise, resolution, field of view), for all studies "
                         "and for one class at a time; writes robustness.png.")] = False,
) -> None:
    """AUROC, AUPRC, sensitivity, specificity and accuracy at the stored threshold, with 95 %
    CIs (stratified bootstrap for AUROC and AUPRC, Wilson intervals for the proportions), a ROC
    curve, and the worklist effect: waiting time of abnormal studies read in score order
    versus arrival order.

    With --shifts, also how the ranking holds up when another site or scanner acquires the
    studies differently (a validation split from the training folder cannot show this).

    Example: `medenhance evaluate-triage ../shared/data/xray-chest-kermany-224/test -m xray-pneumonia`

    Example: `medenhance evaluate-triage data/cxr -m my-model` (the test split of a dataset made by
    `medenhance prepare`)
    """
    from .triage.evaluate import evaluate_triage_folder
    from .triage.metrics import ARRIVAL_ORDERS

    try:
        result = evaluate_triage_folder(folder, model, output, normal_labels=normal,
                                        minutes_per_study=minutes, n_bootstrap=bootstrap,
                                        shifts=shifts, progress=lambda f: track(f, "scoring"),
                                        shift_progress=lambda f: track(f, "acquisition changes"),
                                        split=split, overwrite=overwrite)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted: the evaluation is not finished (its files in {output}/ "
                   "are written once every study is scored; run it again, with --overwrite "
                   "if any are there)", code=130) from None
    part = f", its {result['split']} split" if result["split"] else ""
    table = Table("metric", "value", "95 % CI", title=f"{result['model']} on {folder}{part} "
                  f"({result['n_abnormal']} abnormal, {result['n_normal']} normal)")
    for key in ("auroc", "auprc", "sensitivity", "specificity", "accuracy"):
        lo, hi = result[f"{key}_ci"]
        table.add_row(key, f"{result[key]:.4f}", f"[{lo:.4f}, {hi:.4f}]")
    console.print(table)
    if result["auroc_ci"][1] < 0.5:
        err_console.print(f"[yellow]warning:[/yellow] AUROC {result['auroc']:.3f}: the model "
                          "ranks the normal studies above the abnormal ones; are the labels the "
                          "right way round (--normal names the normal labels)?", highlight=False,
                          soft_wrap=True)
    if result.get("operating_point"):
        err_console.print(f"[yellow]warning:[/yellow] {escape(result['operating_point'])}",
                          highlight=False, soft_wrap=True)
    if result.get("overlap"):
        err_console.print(f"[yellow]warning:[/yellow] {escape(result['overlap'])}: these numbers "
                          "are optimistic; evaluate on images the model never saw",
                          highlight=False, soft_wrap=True)
    if shifts:
        rob = result["robustness"]
        changes = Table("acquisition change", "all studies", "normal only", "abnormal only",
                        title=f"AUROC under simulated acquisition changes (unchanged "
                              f"{rob['clean']:.4f}, mean {rob['robust_auroc']:.4f})")
        for name, row in rob["shifts"].items():
            changes.add_row(name, *(f"{row[k]:.4f}" for k in ("all", "normal_only",
                                                               "abnormal_only")))
        console.print(changes)
    note_repeats(result["repeats"])
    if conflicts := result["conflicts"]:
        err_console.print(f"[yellow]warning:[/yellow] {len(conflicts)} image(s) lie under a normal "
                          f"and an abnormal label and were left out, e.g. "
                          f"{escape(conflicts[0])}", highlight=False, soft_wrap=True)
    n_scored = result["n_normal"] + result["n_abnormal"]
    if result["ood"]:
        err_console.print(f"[yellow]warning:[/yellow] {result['ood']} of {n_scored} image(s) are "
                          "out of distribution (unlike anything the model was trained on): its "
                          "scores of them, and the metrics as far as they count them, may not "
                          "hold", highlight=False, soft_wrap=True)
    warn_population(result["population_shift"])
    warn_calibration(result["model"], result.get("calibration_warning"))
    if outside := result.get("unlabelled"):
        err_console.print(f"note: {len(outside)} image(s) lie outside the label sub-folders and "
                          f"were not evaluated, e.g. {escape(outside[0])}", highlight=False,
                          soft_wrap=True)
    w = result["waits"]
    console.print(f"abnormal studies wait {w['arrival_mean']:.0f} min on average "
                  f"(90th percentile {w['arrival_p90']:.0f}) in arrival order (random: "
                  f"averaged over {ARRIVAL_ORDERS} orders), "
                  f"{w['triage_mean']:.0f} min (90th percentile {w['triage_p90']:.0f}) in score "
                  f"order; {result['ood']} image(s) out of distribution. Written: "
                  f"{output}/scores.csv, {output}/roc.png, {output}/scores.png, "
                  + (f"{output}/robustness.png, " if shifts else "")
                  + f"{output}/summary.json ({RESEARCH_NOTE})")
    failed = result["failures"]        # the metrics are of the others; say so, and exit 1
    report_failures(failed, result["n_normal"] + result["n_abnormal"] + len(failed))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MedEnhanceError as exc:  # a safety net: commands catch their own errors
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        sys.exit(1)
    except OSError as exc:  # unwritable output folder, full disk, ...
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        err_console.print(f"[red]error:[/red] {where}{exc.strerror or exc}", highlight=False,
                          soft_wrap=True)
        sys.exit(1)
    except UnicodeDecodeError as exc:
        err_console.print(f"[red]error:[/red] a text file is not UTF-8 ({exc.reason})",
                          highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
