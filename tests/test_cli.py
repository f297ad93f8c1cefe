"""The command line as a user runs it: exit codes, one-line errors, files written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from typer.testing import CliRunner

from medenhance.cli import app

from .conftest import ROOT

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_info_on_samples(samples: Path) -> None:
    result = run("info", samples)
    assert result.exit_code == 0, result.output
    assert "MONOCHROME1" in result.output and "CR" in result.output


def test_info_bad_file_is_one_line_and_nonzero(tmp_path: Path, samples: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 200)
    result = run("info", bad, samples / "mr_head_MR1_JPLL.dcm")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "bad.dcm" in result.output and "MR" in result.output


def test_a_warning_is_one_line_naming_the_file(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    colour = tmp_path / "colour.png"
    Image.fromarray(np.full((8, 8, 3), (200, 30, 30), np.uint8)).save(colour)
    # In a process of its own: pytest would catch the warning before the CLI's logging does.
    result = subprocess.run([sys.executable, "-c", "from medenhance.cli import app; app()",
                             "triage", str(colour), "-o", str(tmp_path / "w.csv")],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "converted to gray" in line]
    assert len(lines) == 1 and "colour.png" in lines[0]
    assert lines[0].startswith("warning: ")     # as the CLI's own warnings, not "WARNING  ..."
    assert "read_pil" not in result.stderr and "UserWarning" not in result.stderr


def test_degrade_then_evaluate(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    result = run("degrade", samples / "mr_head_MR1_JPLL.dcm",
                 samples / "mri_brain_glioma_Te-gl_0063.png", "-o", out, "--preset", "mri-rician")
    assert result.exit_code == 0, result.output
    degraded = pydicom.dcmread(out / "degraded" / "mr_head_MR1_JPLL.dcm")
    assert "rician" in degraded.DerivationDescription
    assert (out / "records" / "mr_head_MR1_JPLL.dcm.json").exists()
    assert (out / "clean" / "mri_brain_glioma_Te-gl_0063.png").read_bytes() == (
        samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes()
    first = (out / "degraded" / "mri_brain_glioma_Te-gl_0063.png").read_bytes()
    # Same seed, replayed from the record: the same bytes.
    again = tmp_path / "again"
    result = run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", again, "--replay",
                 out / "records" / "mri_brain_glioma_Te-gl_0063.png.json")
    assert result.exit_code == 0, result.output
    assert (again / "degraded" / "mri_brain_glioma_Te-gl_0063.png").read_bytes() == first
    # Refuses to overwrite without --overwrite, and says so.
    result = run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", out, "--preset",
                 "mri-rician")
    assert result.exit_code == 1 and "exists" in result.output
    assert (out / "degraded" / "mri_brain_glioma_Te-gl_0063.png").read_bytes() == first

    result = run("evaluate", "-r", out / "clean", "-t", f"noisy={out / 'degraded'}", "-o",
                 tmp_path / "eval")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "eval" / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(10 < float(r["psnr"]) < 40 for r in rows)
    assert "noisy" in (tmp_path / "eval" / "summary.md").read_text()


def test_degrade_needs_one_source(samples: Path, tmp_path: Path) -> None:
    result = run("degrade", samples, "-o", tmp_path)
    assert result.exit_code == 1 and "exactly one of --preset" in result.output
    result = run("degrade", samples, "-o", tmp_path, "--preset", "nope")
    assert result.exit_code == 1 and "unknown preset" in result.output


def test_prepare_cli(tmp_path: Path, samples: Path) -> None:
    result = run("prepare", samples, "-o", tmp_path / "ds", "--size", "64x48",
                 "--min-foreground", "0.05")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ds" / "manifest.csv").exists()
    result = run("prepare", samples, "-o", tmp_path / "ds2", "--split", "a,b")
    assert result.exit_code == 1 and "--split" in result.output
    # A file that cannot be read is listed at the end and the batch exits 1, its images kept.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copyfile(samples / "mri_brain_glioma_Te-gl_0063.png", mixed / "good.png")
    (mixed / "text.dcm").write_text("not an image")
    result = run("prepare", mixed, "-o", tmp_path / "ds3", "--min-foreground", "0")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "1 of 2 input(s) failed" in said and "text.dcm" in said
    rows = list(csv.DictReader(open(tmp_path / "ds3" / "manifest.csv")))
    assert [Path(r["source"]).name for r in rows] == ["good.png"]
    # Every file left out is in excluded.csv, a file that is no image too (it was not).
    (mixed / "notes.txt").write_text("scanned on Tuesday")
    result = run("prepare", mixed, "-o", tmp_path / "ds3", "--min-foreground", "0",
                 "--overwrite")
    excluded = {Path(r["source"]).name: r["reason"]
                for r in csv.DictReader(open(tmp_path / "ds3" / "excluded.csv"))}
    assert excluded["notes.txt"].startswith("not recognised as an image")
    # --overwrite with fewer images: the replaced dataset's images go (39 stale files stayed).
    result = run("prepare", samples, "-o", tmp_path / "ds4", "--min-foreground", "0")
    assert len(list((tmp_path / "ds4" / "images").rglob("*.npy"))) == 4
    result = run("prepare", mixed / "good.png", "-o", tmp_path / "ds4", "--min-foreground", "0",
                 "--overwrite")
    assert result.exit_code == 0, result.output
    assert [f.name for f in (tmp_path / "ds4" / "images").rglob("*.npy")] == ["good.npy"]


def test_degrade_takes_one_split_of_a_prepared_dataset(tmp_path: Path, samples: Path) -> None:
    """There was no way to degrade only the held-out test split of a prepared dataset."""
    result = run("prepare", samples, "-o", tmp_path / "ds", "--size", "64x64", "--split",
                 "0.5,0,0.5", "--min-foreground", "0")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "ds" / "manifest.csv")))
    test = sorted(Path(r["path"]).name for r in rows if r["split"] == "test")
    assert 0 < len(test) < len(rows)
    for given in (tmp_path / "ds", tmp_path / "ds" / "manifest.csv"):
        out = tmp_path / f"pairs-{given.name}"
        result = run("degrade", given, "--split", "test", "-o", out, "--preset", "gaussian-25")
        assert result.exit_code == 0, result.output
        assert sorted(f.name for f in (out / "degraded").rglob("*.npy")) == test
    wrong = run("degrade", tmp_path / "ds", "--split", "tset", "-o", tmp_path / "x", "--preset",
                "gaussian-25")
    assert wrong.exit_code == 1 and "no image in split 'tset' (its splits:" in wrong.output
    plain = run("degrade", samples, "--split", "test", "-o", tmp_path / "y", "--preset",
                "gaussian-25")
    assert plain.exit_code == 1 and "--split takes a prepared dataset" in plain.output


def test_evaluate_missing_folder(tmp_path: Path) -> None:
    result = run("evaluate", "-r", tmp_path / "nope", "-t", tmp_path)
    assert result.exit_code == 1 and "nope" in result.output


def test_degrade_checks_every_target_before_writing(samples: Path, tmp_path: Path) -> None:
    src = samples / "mri_brain_glioma_Te-gl_0063.png"
    (tmp_path / "out" / "clean").mkdir(parents=True)
    (tmp_path / "out" / "clean" / src.name).write_bytes(b"keep")
    result = run("degrade", src, "-o", tmp_path / "out", "--preset", "gaussian-25")
    assert result.exit_code == 1 and "exists" in result.output
    assert "degraded 0" not in result.output      # no success line when nothing was done
    assert not (tmp_path / "out" / "degraded").exists()


def test_degrade_skips_its_own_outputs_and_names_uid_files(tmp_path: Path, shared: Path) -> None:
    series = shared / "dicom-samples" / "mr_explicit_le" / "ax_asc_35sl"
    src = tmp_path / "scans"
    src.mkdir()
    for f in series.iterdir():  # UID-named files, as scanners write them
        (src / f.stem).write_bytes(f.read_bytes())
    for attempt in range(2):
        result = run("degrade", src, "-o", src / "pairs", "--preset", "mri-rician",
                     "--overwrite")
        assert result.exit_code == 0, result.output
        # The second run finds the first one's 2 degraded and 2 clean files and says so.
        skipped = "4 file(s) inside the output folder" in " ".join(result.output.split())
        assert skipped == (attempt == 1), result.output
    written = sorted(p.name for p in (src / "pairs" / "degraded").iterdir())
    assert len(written) == 2 and all(n.startswith("MR.1.3.12") and n.endswith(".dcm")
                                     for n in written)


def test_bad_pipeline_file_is_one_line(samples: Path, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('[{"op": "gaussian", "params": {"sigma": "abc"}}]')
    result = run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", tmp_path / "o",
                 "--pipeline", tmp_path / "p.json")
    assert result.exit_code == 1 and "Traceback" not in result.output
    # Named once, by the pipeline file and its step, before any image is read.
    assert "p.json: step 0 (gaussian)" in " ".join(result.output.split())
    assert "mri_brain" not in result.output


def test_evaluate_refuses_two_methods_with_one_name(tmp_path: Path) -> None:
    for d in ("ref", "a/degraded", "b/degraded"):
        (tmp_path / d).mkdir(parents=True)
    result = run("evaluate", "-r", tmp_path / "ref", "-t", tmp_path / "a" / "degraded",
                 "-t", tmp_path / "b" / "degraded")
    assert result.exit_code == 1 and "NAME=DIR" in result.output
    # A --test named like a method, or like the --degraded row, lost its row without a word.
    for clash in (("-t", f"nlm={tmp_path / 'a' / 'degraded'}", "-m", "nlm"),
                  ("-t", tmp_path / "a" / "degraded")):
        result = run("evaluate", "-r", tmp_path / "ref", "-d", tmp_path / "b" / "degraded",
                     *clash)
        assert result.exit_code == 1 and "has that name" in result.output, result.output


def test_prepare_refuses_output_inside_input(samples: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes((samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes())
    result = run("prepare", src, "-o", src / "ds", "--min-foreground", "0")
    assert result.exit_code == 1 and "must not contain" in result.output
    assert (src / "a.png").read_bytes() == (samples / "mri_brain_glioma_Te-gl_0063.png").read_bytes()


def test_enhance_samples_and_keep_existing_outputs(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("enhance", samples, "-o", out, "--model", "xray-denoise")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in samples.iterdir() if p.suffix in (".dcm", ".png"))
    derived = pydicom.dcmread(out / "cr_chest_RG1_J2KI.dcm")
    assert "DERIVED" in derived.ImageType and "xray-denoise" in derived.DerivationDescription
    before = (out / "mri_brain_glioma_Te-gl_0063.png").read_bytes()
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    again = run("enhance", samples / "mri_brain_glioma_Te-gl_0063.png", bad, "-o", out,
                "--model", "mri-denoise", "--noise-level", "10")
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert "file exists" in again.output and "broken.png" in again.output
    assert (out / "mri_brain_glioma_Te-gl_0063.png").read_bytes() == before
    # A path that is not there is a failure of the batch, listed at the end; the others are done.
    for command in (("enhance", "--model", "mri-denoise"), ("degrade", "-p", "jpeg")):
        partly = run(command[0], tmp_path / "nowhere.png",
                     samples / "mri_brain_glioma_Te-gl_0063.png", "-o", tmp_path / command[0],
                     *command[1:])
        said = " ".join(partly.output.split())
        assert partly.exit_code == 1 and "1 of 2 input(s) failed" in said, said
        assert f"{tmp_path / 'nowhere.png'}: no such file or folder" in said
        assert [p.name for p in (tmp_path / command[0]).rglob("*.png")]


def test_enhance_unknown_model_is_one_line(samples: Path, tmp_path: Path) -> None:
    result = run("enhance", samples, "-o", tmp_path, "--model", "nope")
    assert result.exit_code == 1
    assert "unknown model 'nope'; available models:" in result.output and "xray-denoise" in result.output
    too_wide = run("enhance", samples, "-o", tmp_path / "o", "--tile", "256", "--overlap", "200")
    assert too_wide.exit_code == 1 and too_wide.output.strip().splitlines() == [
        "error: overlap must be 0 to 120 pixels for 256-pixel tiles, got 200"]
    assert not (tmp_path / "o").exists()


def test_models_lists_bundled_cards() -> None:
    result = run("models")
    assert result.exit_code == 0, result.output
    assert "xray-denoise" in result.output and "mri-denoise" in result.output
    card = run("models", "mri-denoise")
    assert card.exit_code == 0 and '"architecture": "fastunet"' in card.output


def test_train_evaluate_report(samples: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path / "models"))
    assert run("prepare", samples / "mri_brain_glioma_Te-gl_0063.png",
               samples / "xray_chest_nih_00009128_000.png", "-o", tmp_path / "ds",
               "--split", "0.5,0.5,0", "--min-foreground", "0").exit_code == 0
    config = tmp_path / "c.yaml"
    config.write_text(f"name: tiny\nmodel: {{name: fastunet_small, args: {{widths: [8, 8, 8]}}}}\n"
                      f"data: {{manifest: {tmp_path / 'ds' / 'manifest.csv'}, patch_size: 32, "
                      "patches_per_epoch: 8, val_crop: 64}\noptim: {batch_size: 4, epochs: 2}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    result = run("train", "-c", config, "--set", "optim.epochs=1")
    assert result.exit_code == 0, result.output
    assert "registered as model 'tiny'" in result.output
    # One epoch of 8 patches: worse than the degraded input, and the user is told.
    metrics = json.loads((tmp_path / "run" / "best.json").read_text())["metrics"]
    assert metrics["val_psnr"] < metrics["val_psnr_input"]
    assert "makes the validation images worse than they came" in " ".join(result.output.split())
    assert run("models").output.count("tiny") == 1
    again = run("train", "-c", config)
    assert again.exit_code == 1 and "already holds a run" in again.output
    bad = run("train", "-c", config, "--set", "optim.lr=fast")
    assert bad.exit_code == 1 and "optim.lr: expected float" in bad.output

    pairs = tmp_path / "pairs"
    run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", pairs, "-p", "mri-rician")
    ev = run("evaluate", "-r", pairs / "clean", "-d", pairs / "degraded", "-m", "nlm",
             "-m", "tiny", "-o", tmp_path / "eval")
    assert ev.exit_code == 0, ev.output
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"degraded", "nlm", "tiny"}
    assert float(by_method["nlm"]["psnr"]) > float(by_method["degraded"]["psnr"])
    assert float(by_method["nlm"]["seconds"]) > 0
    rep = run("report", tmp_path / "eval", "-o", tmp_path / "report")
    assert rep.exit_code == 0, rep.output
    text = (tmp_path / "report" / "report.md").read_text()
    assert "nlm" in text and "training_curves.png" in text and "Research use only" in text
    assert (tmp_path / "report" / "image_00.png").stat().st_size > 10_000
    assert "<table>" in (tmp_path / "report" / "report.html").read_text()
    missing = run("report", tmp_path / "nothing", "-o", tmp_path / "r2")
    assert missing.exit_code == 1 and "not an evaluation folder" in missing.output


def test_report_of_a_volume_shows_its_middle_slice_as_viewers_do(tmp_path: Path,
                                                                 monkeypatch) -> None:
    import nibabel as nib
    import numpy as np

    import medenhance.report as report
    from medenhance.io import display_frames, read_image

    z, y, x = np.mgrid[0:5, 0:48, 0:48]
    volume = (200 + 600 * (np.hypot(y - 24, x - 24) < 16 - 2 * abs(z - 2)) + 20 * z).astype(
        np.int16)
    volume[:, :6, :6] = 1000                              # a corner mark: orientation shows
    nib.save(nib.Nifti1Image(np.transpose(volume, (2, 1, 0)), np.eye(4)), tmp_path / "v.nii.gz")
    pairs = tmp_path / "pairs"
    assert run("degrade", tmp_path / "v.nii.gz", "-o", pairs, "-p", "mri-rician").exit_code == 0
    assert run("evaluate", "-r", pairs / "clean", "-d", pairs / "degraded", "-m", "nlm", "-o",
               tmp_path / "eval").exit_code == 0
    shown = []
    monkeypatch.setattr(report, "image_figure",
                        lambda name, ref, panels, path: shown.append((ref, panels)))
    assert run("report", tmp_path / "eval", "-o", tmp_path / "report").exit_code == 0
    assert "(slice 3 of 5)" in (tmp_path / "report" / "report.md").read_text()
    (ref, panels), = shown
    clean = read_image(next((pairs / "clean").iterdir()))
    np.testing.assert_allclose(ref, display_frames(clean)[2], atol=1e-6)
    # Stored R, A, S: the mark at the first voxels (left, posterior) shows at the bottom right.
    assert {m for m, _, _ in panels} >= {"nlm"}
    for frame in [ref] + [p for _, p, _ in panels]:
        assert frame[-6:, -6:].mean() > 0.8 > frame[:6, :6].mean()


def test_enhance_keeps_every_output_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray((rng.random((48, 48)) * 65535).astype(np.uint16)).save(
            tmp_path / folder / "x.png")
    # Two inputs of one name are told apart by their folders' names.
    out = run("enhance", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-o",
              tmp_path / "out")
    assert out.exit_code == 0 and "enhanced 2 image(s)" in out.output, out.output
    assert (tmp_path / "out" / "a" / "x.png").is_file()
    assert (tmp_path / "out" / "b" / "x.png").is_file()
    # Where names still meet (the folder a/ and a file a/x.png from elsewhere), the second does
    # not replace the first's output, even with --overwrite.
    (tmp_path / "c" / "a").mkdir(parents=True)
    shutil.copyfile(tmp_path / "a" / "x.png", tmp_path / "c" / "a" / "x.png")
    out = run("enhance", tmp_path / "a", tmp_path / "c" / "a" / "x.png",
              tmp_path / "b" / "x.png", "-o", tmp_path / "out2", "--overwrite")
    assert out.exit_code == 1 and "already written in this run" in out.output
    assert "enhanced 2 image(s)" in out.output
    # The output folder is the input folder: an error, not "enhanced 0 image(s)".
    same = run("enhance", tmp_path / "a", "-o", tmp_path / "a")
    assert same.exit_code == 1 and "every input lies inside the output folder" in same.output
    triage_model = run("enhance", tmp_path / "a", "-o", tmp_path / "o2", "-m", "xray-pneumonia")
    assert triage_model.exit_code == 1 and "is a triage model" in triage_model.output


def test_evaluate_and_report_keep_earlier_results(samples: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    assert run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", pairs, "-p",
               "mri-rician").exit_code == 0
    args = ("evaluate", "-r", pairs / "clean", "--test", pairs / "degraded", "-o",
            tmp_path / "eval")
    assert run(*args).exit_code == 0
    before = (tmp_path / "eval" / "per_image.csv").read_text()
    again = run(*args)
    assert again.exit_code == 1 and "already holds an evaluation" in again.output
    assert (tmp_path / "eval" / "per_image.csv").read_text() == before
    assert run(*args, "--overwrite").exit_code == 0
    (tmp_path / "mine").mkdir()          # a folder with a file of the same name is kept too
    (tmp_path / "mine" / "summary.md").write_text("my notes")
    mine = run(*args[:-1], tmp_path / "mine")
    assert mine.exit_code == 1 and (tmp_path / "mine" / "summary.md").read_text() == "my notes"
    assert run("report", tmp_path / "eval", "-o", tmp_path / "rep").exit_code == 0
    rerun = run("report", tmp_path / "eval", "-o", tmp_path / "rep")
    assert rerun.exit_code == 1 and "already holds a report" in rerun.output
    assert run("report", tmp_path / "eval", "-o", tmp_path / "rep", "--overwrite").exit_code == 0


def test_evaluate_never_scores_an_earlier_runs_method_output(samples: Path,
                                                             tmp_path: Path) -> None:
    """A run that died left OUT/outputs/nlm/ without tables; the next run could not write its
    outputs there and scored the old files (PSNR inf: they were copies of the references)."""
    pairs = tmp_path / "pairs"
    assert run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", pairs, "-p",
               "mri-rician").exit_code == 0
    stale = tmp_path / "eval" / "outputs" / "nlm" / "mri_brain_glioma_Te-gl_0063.png"
    stale.parent.mkdir(parents=True)
    shutil.copyfile(pairs / "clean" / stale.name, stale)
    args = ("evaluate", "-r", pairs / "clean", "-d", pairs / "degraded", "-m", "nlm", "-o",
            tmp_path / "eval")
    refused = run(*args)
    assert refused.exit_code == 1 and f"{stale}: already exists" in " ".join(
        refused.output.split())
    assert not (tmp_path / "eval" / "per_image.csv").exists()
    assert stale.read_bytes() == (pairs / "clean" / stale.name).read_bytes()
    # Outputs and references are paired by name without suffix: an earlier .npy counts too.
    other = stale.with_suffix(".npy")
    stale.rename(other)
    np.save(other, np.zeros((8, 8), np.float32))
    refused = run(*args)
    assert refused.exit_code == 1 and f"{other}: already exists" in " ".join(
        refused.output.split())
    other.rename(stale)
    shutil.copyfile(pairs / "clean" / stale.name, stale)
    assert run(*args, "--overwrite").exit_code == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    assert [r["method"] for r in rows] == ["degraded", "nlm"]
    assert 10 < float(rows[1]["psnr"]) < 60           # the new output, not the reference


def test_evaluate_refuses_bm3d_before_any_work_when_it_is_not_installed(
        samples: Path, tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bm3d" else real(name, *a))
    pairs = tmp_path / "pairs"
    assert run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", pairs, "-p",
               "mri-rician").exit_code == 0
    result = run("evaluate", "-r", pairs / "clean", "-d", pairs / "degraded", "-m", "nlm",
                 "-m", "bm3d", "-o", tmp_path / "eval")
    assert result.exit_code == 1
    assert "method bm3d needs the optional `bm3d` package" in " ".join(result.output.split())
    assert not (tmp_path / "eval").exists()


def test_list_presets_needs_no_input() -> None:
    result = run("degrade", "--list-presets")
    assert result.exit_code == 0 and "mri-rician" in result.output
    assert run("degrade", "-p", "mri-rician").exit_code == 2


def test_models_says_when_a_user_model_is_hidden_by_a_bundled_one(tmp_path: Path,
                                                                  monkeypatch) -> None:
    from medenhance.models.card import bundled_dir

    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(bundled_dir() / f"xray-triage{suffix}", tmp_path / f"xray-triage{suffix}")
    result = run("models")
    assert result.exit_code == 0
    assert result.output.count("hidden by bundled") == 1


def test_enhance_notes_a_modality_the_model_was_not_trained_on(samples: Path,
                                                               tmp_path: Path) -> None:
    other = run("enhance", samples / "mr_head_MR1_JPLL.dcm", "-m", "xray-denoise", "-o", tmp_path)
    assert other.exit_code == 0 and "modality MR, but xray-denoise was trained on CR/DX" in \
        other.output.replace("\n", " ")
    same = run("enhance", samples / "mr_head_MR1_JPLL.dcm", "-m", "mri-denoise", "-o",
               tmp_path / "mr")
    assert same.exit_code == 0 and "was trained on" not in same.output
    # One note per modality, and at the end how many files it concerned (the later files of a
    # modality went without a word).
    import shutil

    for i in range(3):
        shutil.copyfile(samples / "mr_head_MR1_JPLL.dcm", tmp_path / f"mr{i}.dcm")
    many = run("enhance", *(tmp_path / f"mr{i}.dcm" for i in range(3)),
               samples / "cr_chest_RG1_J2KI.dcm", "-m", "xray-denoise", "-o", tmp_path / "many")
    said = " ".join(many.output.split())
    assert many.exit_code == 0 and said.count("modality MR, but") == 1
    assert "of the images given, 3 are MR; xray-denoise was trained on CR/DX images" in said
    # A PNG says nothing of what it shows: without --model, the user is told which model ran.
    png = samples / "mri_brain_glioma_Te-gl_0063.png"
    default = run("enhance", png, "-o", tmp_path / "png")
    assert default.exit_code == 0 and "no --model was given: xray-denoise (trained on CR/DX " \
        "images) is used" in " ".join(default.output.split())
    named = run("enhance", png, "-m", "xray-denoise", "-o", tmp_path / "png2")
    assert named.exit_code == 0 and "no --model" not in named.output
    assert (tmp_path / "png" / png.name).read_bytes() == (tmp_path / "png2" / png.name).read_bytes()


def test_triage_puts_a_modality_the_model_was_not_trained_on_out_of_distribution(
        shared: Path, tmp_path: Path) -> None:
    """The NEMA CT slice was ranked "likely abnormal" by mri-triage, with ood 0 and no note."""
    ct, mr = shared / "dicom-samples" / "wg04" / "CT1_RLE.dcm", shared / "dicom-samples" / \
        "wg04" / "MR1_JPLL.dcm"
    result = run("triage", ct, mr, "-m", "mri-triage", "-o", tmp_path / "w.csv")
    assert result.exit_code == 0, result.output
    assert "(1 of modality CT)" in result.output.replace("\n", " ")
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "w.csv"))}
    assert rows["CT1_RLE.dcm"]["ood"] == "1"
    assert rows["CT1_RLE.dcm"]["note"] == "modality CT (model trained on MR): read as flagged"
    assert "modality" not in rows["MR1_JPLL.dcm"]["note"]


def test_evaluate_refuses_what_it_would_ignore_and_report_works_from_anywhere(
        samples: Path, tmp_path: Path, monkeypatch) -> None:
    pairs = tmp_path / "pairs"
    assert run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", pairs, "-p",
               "mri-rician").exit_code == 0
    base = ("evaluate", "-r", pairs / "clean", "-d", pairs / "degraded")
    # A mistyped records folder would let NLM run without the true noise level.
    missing = run(*base, "-m", "nlm", "--records", tmp_path / "nope", "-o", tmp_path / "e0")
    assert missing.exit_code == 1 and "--records must be a folder" in missing.output
    triage = run(*base, "-m", "xray-triage", "-o", tmp_path / "e1")
    assert triage.exit_code == 1 and "is a triage model" in triage.output
    metric = run(*base, "-m", "nlm", "--metric", "psnrr", "-o", tmp_path / "e2")
    assert metric.exit_code == 1 and metric.output.count("psnrr") == 1
    assert not (tmp_path / "e2").exists()
    twice = run(*base, "-m", "nlm", "-m", "nlm", "-o", tmp_path / "eval")
    assert twice.exit_code == 0, twice.output
    # Reported from another folder, and after the evaluation folder was moved.
    (tmp_path / "eval").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    report = run("report", ".", "-o", tmp_path / "rep")
    assert report.exit_code == 0, report.output
    assert "nlm:" in (tmp_path / "rep" / "report.md").read_text()
    (tmp_path / "moved" / "per_image.csv").write_text("a,b\n1,2\n")
    edited = run("report", ".", "-o", tmp_path / "rep2")
    assert edited.exit_code == 1 and "needs the method and image columns" in edited.output
    assert not (tmp_path / "rep2").exists()


def test_prepare_warns_of_an_empty_split_and_train_names_a_bad_manifest(
        samples: Path, tmp_path: Path) -> None:
    result = run("prepare", samples, "-o", tmp_path / "d", "--split", "0.6,0.2,0.2", "--seed",
                 "3", "--size", "64")
    assert result.exit_code == 0 and "no image in the val split" in result.output
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split\na.png,train\n")
    bad = run("train", "-c", ROOT / "configs" / "xray-denoise.yaml", "--set",
              f"data.manifest={manifest}", "--set", f"output_dir={tmp_path / 'run'}", "--set",
              "register=false")
    assert bad.exit_code == 1 and "no patient_id column" in bad.output


def test_error_messages_keep_their_brackets(tmp_path: Path, samples: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("- {op: gaussian, params: {sigma: {uniform: [0.1]}}}\n")
    result = run("degrade", samples / "mri_brain_glioma_Te-gl_0063.png", "-o", tmp_path / "o",
                 "--pipeline", pipeline)
    assert result.exit_code == 1 and "needs [low, high]" in result.output


def test_train_takes_resume_or_overwrite_not_both() -> None:
    both = run("train", "-c", ROOT / "configs" / "xray-denoise.yaml", "--resume", "--overwrite")
    assert both.exit_code == 1 and "not both" in both.output


def test_several_input_folders_keep_their_names_under_the_output(samples: Path,
                                                                 tmp_path: Path) -> None:
    """Two folders with files of the same name collided in the output folder's root."""
    for site in ("site1", "site2"):
        (tmp_path / site).mkdir()
        shutil.copyfile(samples / "mri_brain_glioma_Te-gl_0063.png", tmp_path / site / "a.png")
    out = tmp_path / "out"
    result = run("enhance", tmp_path / "site1", tmp_path / "site2", "-m", "mri-denoise", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "site1/a.png", "site2/a.png"]
    one = run("enhance", tmp_path / "site1", "-m", "mri-denoise", "-o", tmp_path / "one")
    assert one.exit_code == 0 and (tmp_path / "one" / "a.png").is_file()
    # Folders, or files given themselves, of one name take as many parent names as tell them
    # apart (the second of each pair failed with "already written in this run").
    for hospital in ("h1", "h2"):
        (tmp_path / hospital / "images").mkdir(parents=True)
        shutil.copyfile(samples / "mri_brain_glioma_Te-gl_0063.png",
                        tmp_path / hospital / "images" / "a.png")
    same = tmp_path / "same"
    result = run("degrade", tmp_path / "h1" / "images", tmp_path / "h2" / "images",
                 tmp_path / "site1" / "a.png", tmp_path / "site2" / "a.png", "--preset",
                 "gaussian-15", "-o", same)
    assert result.exit_code == 0, result.output
    degraded = same / "degraded"
    assert sorted(p.relative_to(degraded).as_posix() for p in degraded.rglob("*.png")) == [
        "h1/images/a.png", "h2/images/a.png", "site1/a.png", "site2/a.png"]
    # A folder with a sub-folder of its own given too: each file once, no name clash.
    (tmp_path / "site1" / "sub").mkdir()
    shutil.copyfile(samples / "mri_brain_glioma_Te-gl_0063.png", tmp_path / "site1" / "sub" /
                    "b.png")
    both = run("enhance", tmp_path / "site1", tmp_path / "site1" / "sub", "-m", "mri-denoise",
               "-o", tmp_path / "both")
    assert both.exit_code == 0, both.output
    assert sorted(p.relative_to(tmp_path / "both").as_posix()
                  for p in (tmp_path / "both").rglob("*.png")) == ["site1/a.png", "site1/sub/b.png"]


def test_an_interrupted_batch_says_what_it_wrote(samples: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    """Ctrl-C exited 130 with nothing said of the outputs already written."""
    import medenhance.inference.enhance as enhancing

    real, calls = enhancing.enhance_image, []

    def stopped_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(enhancing, "enhance_image", stopped_at_the_second)
    result = run("enhance", samples, "-m", "mri-denoise", "-o", tmp_path / "out")
    assert result.exit_code == 130
    said = " ".join(result.output.split())
    assert "interrupted: 1 of 4 input(s) done" in said and " was in progress" in said
    assert len([p for p in (tmp_path / "out").rglob("*") if p.is_file()]) == 1


def test_an_output_folder_under_a_file_is_refused_once(samples: Path, tmp_path: Path) -> None:
    """`-o afile/out` failed with "Not a directory" once per input."""
    (tmp_path / "afile").write_text("")
    for command in (("degrade", samples, "-p", "jpeg"), ("enhance", samples)):
        result = run(*command, "-o", tmp_path / "afile" / "out")
        assert result.exit_code == 1
        assert result.output.count("is a file, not a folder") == 1, result.output
        # `-o out.png` made a folder of that name, the image inside it.
        named = run(*command, "-o", tmp_path / "out.png")
        assert named.exit_code == 1 and "takes a folder" in named.output
        assert not (tmp_path / "out.png").exists()


def test_models_says_which_user_models_it_cannot_list(tmp_path: Path, monkeypatch) -> None:
    """A broken card was silently missing from `models`, yet `-m bad` then failed."""
    monkeypatch.setenv("MEDENHANCE_MODELS", str(tmp_path))
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.safetensors").write_bytes(b"")
    result = run("models")
    assert result.exit_code == 0 and "xray-denoise" in result.output
    assert "not listed:" in result.output and "bad.json: not valid JSON" in result.output


def test_overwrite_scores_only_this_run_and_deletes_nothing(samples: Path, tmp_path: Path
                                                            ) -> None:
    """Re-running evaluate on fewer images scored the earlier run's outputs too (n 2 for 1
    image), and a first attempt at cleaning up deleted folders the user had given or made."""
    pairs, ev, rep = tmp_path / "pairs", tmp_path / "ev", tmp_path / "rep"
    for name in ("mri_brain_glioma_Te-gl_0063.png", "mr_head_MR1_JPLL.dcm"):
        assert run("degrade", samples / name, "-o", pairs, "-p", "mri-rician").exit_code == 0
    base = ("evaluate", "-r", pairs / "clean", "-o", ev)
    assert run(*base, "-d", pairs / "degraded", "-m", "nlm", "-m", "mri-denoise").exit_code == 0
    one = tmp_path / "one"
    for part in ("clean", "degraded"):
        (one / part).mkdir(parents=True)
        first = next(p for p in (pairs / part).iterdir() if p.suffix == ".png")
        shutil.copyfile(first, one / part / first.name)
    # Against the whole reference: the degraded folder misses an image (listed, exit 1), and
    # mri-denoise is scored on its one new output, not also on the earlier run's other one.
    again = run(*base, "-d", one / "degraded", "-m", "mri-denoise", "--overwrite")
    assert again.exit_code == 1 and "1 of 3 input(s) failed" in again.output, again.output
    rows = list(csv.DictReader(open(ev / "per_image.csv")))
    assert sorted(r["method"] for r in rows) == ["degraded", "mri-denoise"]    # n 1 each
    assert "also holds nlm, not part of this evaluation" in " ".join(again.output.split())
    assert (ev / "outputs" / "nlm").is_dir()                        # kept: never deleted
    # An earlier output given as -d is read, and still there afterwards.
    given = run(*base, "-d", ev / "outputs" / "nlm", "-m", "mri-denoise", "--overwrite")
    assert given.exit_code == 0 and any((ev / "outputs" / "nlm").iterdir())
    assert run("report", ev, "-o", rep, "--images", "2").exit_code == 0
    (rep / "image_2024_holiday.png").write_bytes(b"a user's own")   # never touched
    assert run("report", ev, "-o", rep, "--images", "1", "--overwrite").exit_code == 0
    assert sorted(p.name for p in rep.glob("image_*.png")) == ["image_00.png",
                                                                "image_2024_holiday.png"]
    pics = tmp_path / "pics"            # a report's file name already there: refused
    pics.mkdir()
    (pics / "image_00.png").write_bytes(b"x")
    refused = run("report", ev, "-o", pics, "--images", "1")
    assert refused.exit_code == 1 and (pics / "image_00.png").read_bytes() == b"x"

def test_pacs_exports_with_reports_and_suffixless_files(samples: Path, tmp_path: Path) -> None:
    """A dose report among the images failed info, enhance and degrade with exit status 1, and a
    suffix-less `IM0` beside `IM0.dcm` collided in the output folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    export = tmp_path / "export"
    export.mkdir()
    for name in ("IM0", "IM0.dcm"):
        shutil.copyfile(samples / "mr_head_MR1_JPLL.dcm", export / name)
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"      # X-Ray Radiation Dose SR
    report.SOPInstanceUID, report.Modality = generate_uid(), "SR"
    report.save_as(export / "dose.dcm", enforce_file_format=True)
    said = "1 DICOM object(s) without an image"
    info = run("info", export)
    assert info.exit_code == 0 and said in " ".join(info.output.split()), info.output
    assert "dose.dcm" not in info.stdout
    out = tmp_path / "out"
    result = run("degrade", export, "-p", "mri-rician", "-o", out)
    assert result.exit_code == 0 and said in " ".join(result.output.split()), result.output
    assert sorted(p.name for p in (out / "degraded").iterdir()) == ["IM0.dcm", "IM0_1.dcm"]
    assert sorted(p.name for p in (out / "clean").iterdir()) == ["IM0.dcm", "IM0_1.dcm"]
    enhanced = run("enhance", export, "-m", "mri-denoise", "-o", tmp_path / "enh")
    assert enhanced.exit_code == 0 and said in " ".join(enhanced.output.split())
    assert sorted(p.name for p in (tmp_path / "enh").iterdir()) == ["IM0.dcm", "IM0_1.dcm"]
    prepared = run("prepare", export, "-o", tmp_path / "ds", "--min-foreground", "0")
    assert prepared.exit_code == 0 and said in " ".join(prepared.output.split()), prepared.output


def test_heatmaps_cover_out_of_distribution_studies_below_the_threshold(samples: Path,
                                                                         tmp_path: Path) -> None:
    """An out-of-distribution study is read as flagged, so it gets its heatmap even when its
    score is below the threshold (the NEMA adult radiograph for the paediatric classifier)."""
    heat = tmp_path / "heat"
    result = run("triage", samples, "-m", "xray-pneumonia", "-o", tmp_path / "w.csv",
                 "--heatmaps", heat)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "w.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    from medenhance.triage.score import TriageScorer

    threshold = TriageScorer("xray-pneumonia").threshold
    quiet = [r for r in rows if r["ood"] == "1" and float(r["score"]) < threshold]
    assert quiet, "no out-of-distribution study below the threshold among the samples"
    names = {p.name for p in heat.glob("*.png")}
    assert names == {f"{int(r['rank']):04d}_{Path(r['path']).stem}.png" for r in rows
                     if r["flag"] == "1"}
    assert f"{int(quiet[0]['rank']):04d}_{Path(quiet[0]['path']).stem}.png" in names
    page = (heat / "index.html").read_text()
    assert "out of distribution" in page
    # The page gives each such study the worklist's reason (a foreign modality, for one).
    import html

    reasons = {r["note"] for r in rows if r["ood"] == "1"}
    assert any(n.startswith("modality ") for n in reasons), reasons
    for reason in reasons:
        assert f"<b>{html.escape(reason)}</b>" in page
    # The picture says so too (caption and PNG comment), also when it travels alone.
    from PIL import Image

    quiet_png = heat / f"{int(quiet[0]['rank']):04d}_{Path(quiet[0]['path']).stem}.png"
    assert "out of distribution" in Image.open(quiet_png).text["Comment"]


def test_triage_lists_files_of_one_picture_and_names_each_others(samples: Path,
                                                                  tmp_path: Path) -> None:
    """The same radiograph under three names (a user's export beside the original): each is a
    row of the worklist, saying which other files show the same picture."""
    folder = tmp_path / "in"
    folder.mkdir()
    chest = samples / "xray_chest_nih_00009128_000.png"
    for name in ("a.png", "b.png", "c.png"):
        shutil.copyfile(chest, folder / name)
    shutil.copyfile(samples / "cr_chest_RG1_J2KI.dcm", folder / "other.dcm")
    result = run("triage", folder, "-m", "xray-pneumonia", "-o", tmp_path / "w.csv")
    assert result.exit_code == 0, result.output
    assert "2 file(s) show the same picture as another file" in " ".join(result.output.split())
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "w.csv"))}
    assert len(rows) == 4 and len({rows[n]["score"] for n in ("a.png", "b.png", "c.png")}) == 1
    first = str(folder / "a.png")
    assert rows["a.png"]["note"].endswith(f"same picture as {folder / 'b.png'}, "
                                          f"{folder / 'c.png'}")
    assert rows["b.png"]["note"].endswith(f"same picture as {first}, {folder / 'c.png'}")
    assert rows["c.png"]["note"].endswith(f"same picture as {first}, {folder / 'b.png'}")
    assert "same picture" not in rows["other.dcm"]["note"]
