"""The ``medenhance`` command: one sub-command per verb, each a thin layer over the Python API.

Every failure a user can cause prints one line (``error: FILE: reason``) and exits non-zero;
batches go on past bad files and list them at the end.
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from ._version import __version__
from .errors import MedEnhanceError

app = typer.Typer(
    name="medenhance", no_args_is_help=True, add_completion=False,
    rich_markup_mode="markdown",
    help="Denoise, super-resolve and triage medical images (DICOM, PNG/TIFF, NIfTI, .npy).\n\n"
         "**Research use only: not for diagnosis.**",
)
# Tables stay readable when piped to a file or a log (Rich assumes 80 columns there).
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)
T = TypeVar("T")

RESEARCH_NOTE = "research use only, not for diagnosis"


def track(items: Sequence[T], description: str) -> Iterable[T]:
    """A progress bar with count and ETA (quiet when output is not a terminal)."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=err_console, transient=True, disable=not err_console.is_terminal)
    with progress:
        yield from progress.track(items, total=len(items), description=description)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def report_failures(failures: list[str], total: int) -> None:
    """List bad files at the end of a batch and exit non-zero if there were any."""
    if not failures:
        return
    err_console.print(f"[yellow]{len(failures)} of {total} file(s) failed:[/yellow]")
    for line in failures:
        err_console.print(f"  {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


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
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    logging.captureWarnings(True)
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
    files = find_images(paths, errors=failures)
    table = Table("file", "format", "modality", "size", "frames", "bits", "photometric",
                  "spacing", "transfer syntax", show_lines=False)
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                i = inspect_image(f)
        except MedEnhanceError as exc:
            failures.append(str(exc))
            continue
        table.add_row(str(f), i.format, i.modality, f"{i.rows} x {i.columns}", str(i.frames),
                      i.bits_stored, i.photometric, i.pixel_spacing, i.transfer_syntax)
    if table.row_count:
        console.print(table)
    report_failures(failures, len(files) + sum(1 for m in failures if "no such" in m))


# ------------------------------------------------------------------------------------ degrade
def _file_seed(seed: int, name: str) -> int:
    """Per-file seed: independent of the order and number of files in the batch."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _relative_names(inputs: list[Path], files: list[Path]) -> list[Path]:
    names = []
    for f in files:
        root = next((r for r in inputs if r.is_dir() and r in f.parents), None)
        names.append(f.relative_to(root) if root else Path(f.name))
    return names


@app.command()
def degrade(
    inputs: Annotated[list[Path], typer.Argument(help="Clean image files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path(
        "degraded"),
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="Named degradation (see --list-presets).")] = None,
    pipeline: Annotated[Path | None, typer.Option(
        help="JSON/YAML pipeline file instead of a preset.")] = None,
    replay: Annotated[Path | None, typer.Option(
        help="Replay one recorded degradation (.json from records/) on every input.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed; the same seed gives the same bytes.")
                    ] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    list_presets: Annotated[bool, typer.Option("--list-presets",
                                               help="List the presets and exit.")] = False,
) -> None:
    """Simulate degradations to make (clean, degraded) training pairs.

    Writes `OUT/clean/NAME` (a copy of the input), `OUT/degraded/NAME` (same format and units)
    and `OUT/records/NAME.json` (parameters and seeds, replayable with `--replay`).

    Examples:

    * `medenhance degrade samples/xray_chest_nih_00009128_000.png -o pairs --preset xray-lowdose`
    * `medenhance degrade scans/ -o pairs --preset mri-rician --seed 7`
    * `medenhance degrade --list-presets`
    """
    from .degrade import PRESETS, DegradationRecord, Pipeline, degrade_image
    from .io import find_images, full_suffix, read_image, write_image
    from .io._files import atomic_write

    if list_presets:
        table = Table("preset", "modality", "what it simulates")
        for name, spec in PRESETS.items():
            table.add_row(name, spec["modality"], spec["description"])
        console.print(table)
        return
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
        files = find_images(inputs)
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    out_root = output.resolve()
    # Never read our own earlier outputs back as inputs (e.g. `degrade scans -o scans/pairs`).
    files = [f for f in files if out_root not in f.resolve().parents]
    names = _relative_names(inputs, files)
    failures: list[str] = []
    done = 0
    for f, name in track(list(zip(files, names, strict=True)), "degrading"):
        if full_suffix(name) == "":
            name = name.with_name(name.name + ".dcm")  # UID-named DICOM files have no suffix
        targets = (output / "degraded" / name, output / "clean" / name,
                   output / "records" / name.with_name(name.name + ".json"))
        try:
            for target in targets:  # check all three before writing any
                if target.resolve() == f.resolve():
                    raise MedEnhanceError(f"{target}: refusing to overwrite the input file")
                if target.exists() and not overwrite:
                    raise MedEnhanceError(f"{target}: file exists (pass --overwrite to replace it)")
            image = read_image(f)
            if pipe is not None:
                degraded, record = degrade_image(image, pipe, _file_seed(seed, str(name)))
            else:
                degraded, record = degrade_image(image, record)
            record.extra["source"] = str(f)
            write_image(degraded, targets[0], overwrite=overwrite)
            atomic_write(targets[1], lambda tmp: shutil.copyfile(f, tmp), overwrite=overwrite)
            atomic_write(targets[2], lambda tmp: tmp.write_text(record.to_json()),
                         overwrite=overwrite)
            done += 1
        except MedEnhanceError as exc:
            message = str(exc)
            failures.append(message if str(f) in message or str(output) in message
                            else f"{f}: {message}")
        except OSError as exc:
            failures.append(f"{f}: {exc.strerror or exc}")
    console.print(f"degraded {done} image(s) into {output}/degraded (clean copies in "
                  f"{output}/clean, records in {output}/records)")
    report_failures(failures, len(files))


# ----------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    reference: Annotated[Path, typer.Option("--reference", "-r",
                                            help="Folder of reference (clean) images.")],
    test: Annotated[list[str], typer.Option(
        "--test", "-t", help="Folder to compare; repeat for several methods. NAME=DIR sets the "
                             "method's name (default: the folder's name).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the CSV tables.")] =
    Path("evaluation"),
    metric: Annotated[list[str] | None, typer.Option(
        help="Metrics to compute (default psnr, ssim, ms_ssim, rmse, mae).")] = None,
) -> None:
    """Compare folders of images with references, paired by file name.

    Writes `per_image.csv`, `summary.csv` and `summary.md` (mean and 95 % CI per metric and
    method) to the output folder, and prints the summary.

    Example: `medenhance evaluate -r pairs/clean -t pairs/degraded -o eval/`
    """
    from .evaluate import DEFAULT_METRICS, evaluate_folders, summary_markdown, write_csv

    tests: dict[str, str] = {}
    for item in test:
        name, _, folder = item.rpartition("=") if "=" in item else ("", "", item)
        label = name or Path(folder).name
        if label in tests:
            raise fail(f"two --test folders are both called {label!r}; name them with NAME=DIR")
        tests[label] = folder
    metrics = tuple(metric) if metric else DEFAULT_METRICS
    try:
        if not reference.is_dir():
            raise MedEnhanceError(f"{reference}: reference must be a folder")
        for folder in tests.values():
            if not Path(folder).is_dir():
                raise MedEnhanceError(f"{folder}: test must be a folder")
        result = evaluate_folders(reference, tests, metrics=metrics,
                                  progress=lambda pairs: track(pairs, "evaluating"))
    except MedEnhanceError as exc:
        raise fail(str(exc)) from None
    if not result.rows:
        report_failures(result.failures, len(result.failures))
        raise fail("no image could be evaluated")
    summary = result.summary()
    write_csv(result.rows, output / "per_image.csv")
    write_csv(summary, output / "summary.csv")
    md = summary_markdown(summary, metrics)
    (output / "summary.md").write_text(md)
    table = Table("method", "n", *metrics, title="mean [95 % CI]")
    for line in md.splitlines()[2:]:
        table.add_row(*[c.strip() for c in line.strip("|").split("|")])
    console.print(table)
    console.print(f"tables written to {output}/ (per_image.csv, summary.csv, summary.md)")
    report_failures(result.failures, len(result.rows) + len(result.failures))


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
        help="Rotate landscape images to portrait.")] = False,
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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Prepare a dataset: filter, rotate, resize, and split train/val/test by patient.

    Patient ids come from DICOM PatientID, `--patient-regex` or `--patient-csv`.

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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MedEnhanceError as exc:  # a safety net: commands catch their own errors
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
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
