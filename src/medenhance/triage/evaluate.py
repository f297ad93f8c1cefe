"""Evaluate a triage model on labelled images: discrimination, operating point, worklist effect."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, MedEnhanceError
from ..io import read_image
from .data import labelled_files, manifest_of
from .metrics import (auprc, auroc, bootstrap_ci, roc_curve, wilson_ci,
                      worklist_waits)
from .score import CSV_NOTE, NOTE, TriageScorer, population_shift, threshold_text


def _resolve_copies(paths: Sequence[str], labels_of: dict[str, set[str]],
                    copies: dict[str, str], normal: set[str]
                    ) -> tuple[list[str], list[str], set[str]]:
    """``(repeats, conflicts, dropped)`` for the files ``paths`` with their labels, where
    ``copies`` maps a file to an earlier one showing the same image. Copies form groups (a
    copy of a file that is itself a copy, by another key, joins the first file's group); a group counts once, by its first file,
    and not at all where it holds a normal and an abnormal label: neither can be trusted, as
    train-triage leaves such images out. ``dropped``: the files of those groups."""
    def first(path: str) -> str:
        while path in copies:       # each step leads to a file read earlier: no cycle
            path = copies[path]
        return path

    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(first(path), []).append(path)
    repeats: list[str] = []
    conflicts: list[str] = []
    dropped: set[str] = set()
    for head, group in groups.items():
        labels = sorted({label for member in group for label in labels_of[member]})
        if len({label.lower() in normal for label in labels}) == 2:
            what = "the same image" if len(group) > 1 else "one file"
            conflicts.append(f"{' and '.join(group)}: {what}, labelled {' and '.join(labels)}")
            dropped.update(group)
        else:
            repeats += [f"{member}: the same image as {head}" for member in group if member != head]
    return repeats, conflicts, dropped


def evaluate_triage_folder(folder: str | Path, model: str, output: str | Path, *,
                           normal_labels: Sequence[str] | None = None,
                           minutes_per_study: float = 5.0, n_bootstrap: int = 1000,
                           shifts: bool = False, progress: Callable | None = None,
                           shift_progress: Callable | None = None, split: str | None = None,
                           overwrite: bool = False,
                           studies: list | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``folder`` (label sub-folders, or a prepared dataset: its ``split``
    rows, by default ``test``); ``shifts``: also the AUROC under simulated acquisition changes
    (:mod:`.robustness`), written to ``robustness.png`` and the summary. An earlier evaluation in
    ``output`` is kept (:class:`DatasetError`) unless ``overwrite``. ``studies``: a list that
    receives the :class:`~.score.TriageResult` of every study scored.

    A picture given twice (the same grey levels, :func:`.data.picture_key`, or a DICOM SOP
    Instance UID read before) counts once
    (``repeats``), and not at all where one copy is labelled normal and the other abnormal
    (``conflicts``)."""
    base, out = Path(folder), Path(output)
    if not minutes_per_study > 0:
        raise DatasetError(f"--minutes (reading time per study) must be above 0, got "
                           f"{minutes_per_study:g}")
    if str(output) == "-":
        raise DatasetError("-o -: an evaluation writes a folder (scores, plots, summary), not "
                           "one stream; name a folder")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: is a file; the evaluation's output is a folder")
    if (out / "summary.json").exists() and not overwrite:
        raise DatasetError(f"{out}: already holds an evaluation (pass --overwrite to replace it)")
    if not base.exists():
        raise DatasetError(f"{base}: no such folder or file")
    prepared = manifest_of(base) is not None
    if split is not None and not prepared:
        raise DatasetError(f"{base}: --split is for datasets made by `medenhance prepare`; this "
                           "is a folder of label sub-folders, all of which are evaluated")
    split = (split or "test") if prepared else None
    unlabelled: list[Path] = []
    # First what the data is (a CSV that is no manifest is refused as such), then where to write.
    entries = labelled_files(base, splits=[split] if split else None, unlabelled=unlabelled)
    data_root = base if base.is_dir() else base.parent
    if out.resolve() == data_root.resolve() or data_root.resolve() in out.resolve().parents:
        # Its plots would be read as studies by the next evaluation of the same folder.
        raise DatasetError(f"{out}: inside the evaluated data {data_root}; choose an output "
                           "folder outside it")
    scorer = TriageScorer(model)
    normal = {n.lower() for n in (normal_labels or scorer.info["normal_labels"])}
    # A file listed twice (a manifest's rows) is one file; its labels are all it was given.
    labels_of: dict[str, set[str]] = {}
    for e in entries:
        labels_of.setdefault(str(e.path), set()).add(e.label)
    paths = list(labels_of)
    failures: list[str] = []
    copies: dict[str, str] = {}       # the scorer's: same SOP Instance UID or same picture
    results = scorer.score_files(paths, failures, progress=progress, copies=copies)
    repeats, conflicts, dropped = _resolve_copies(paths, labels_of, copies, normal)
    results = [r for r in results if r.path not in dropped]
    if not results:
        why = ([f"{len(failures)} could not be read (e.g. {failures[0]})"] if failures else []) + (
            [f"{len(dropped)} were left out as one image under a normal and an abnormal label "
             f"(e.g. {conflicts[0]})"] if conflicts else [])
        raise DatasetError(f"{base}: nothing to evaluate of its {len(paths)} images: "
                           + "; ".join(why))
    label_of = {p: sorted(labels)[0] for p, labels in labels_of.items()}   # of one class now
    if studies is not None:
        studies += results
    labels = np.array([0 if label_of[r.path].lower() in normal else 1 for r in results])
    if len(set(labels.tolist())) < 2:
        found = sorted({label_of[r.path] for r in results})
        raise DatasetError(f"{base}: need normal and abnormal images; the labels are {found}, "
                           f"of which {'all' if labels.all() else 'none'} are abnormal (normal: "
                           f"{sorted(normal)}; --normal names other normal labels)")
    scores = np.array([r.score for r in results])
    # Ranks by logit: a steep calibration rounds scores to 1.0, and ties would cost AUROC.
    ranking = np.array([r.rank_key for r in results])
    t = scorer.threshold
    # At the threshold as the worklist flags (by logit, for cards that store one).
    flagged = np.array([bool(r.flag) for r in results])
    result: dict[str, Any] = {"model": scorer.model.card.name, "folder": str(base),
                              "split": split,
                              "threshold": t,
                              "threshold_logit": scorer.info.get("threshold_logit"),
                              "n_normal": int((labels == 0).sum()),
                              "target_sensitivity": scorer.info.get("target_sensitivity"),
                              # What the operating point gave on the validation split.
                              "validation": {k: scorer.model.card.metrics.get(f"val_{k}")
                                             for k in ("sensitivity", "specificity",
                                                       "abnormal", "normal")},
                              "n_abnormal": int(labels.sum()),
                              "ood": int(sum(r.ood for r in results)), "note": NOTE,
                              "failures": failures, "repeats": repeats,
                              "conflicts": conflicts,
                              "population_shift": population_shift(results, scorer.info),
                              "calibration_warning": scorer.calibration_warning,
                              "unlabelled": [str(f) for f in unlabelled]}
    for name, fn in (("auroc", auroc), ("auprc", auprc)):       # rank measures: bootstrap
        result[name] = float(fn(labels, ranking))
        result[f"{name}_ci"] = list(bootstrap_ci(labels, ranking, fn, n=n_bootstrap))
    counts = {"sensitivity": (int(flagged[labels == 1].sum()), int((labels == 1).sum())),
              "specificity": (int((~flagged[labels == 0]).sum()), int((labels == 0).sum())),
              "accuracy": (int((flagged == (labels == 1)).sum()), len(labels))}
    for name, (k, n) in counts.items():          # proportions at the threshold: Wilson
        result[name] = k / n
        result[f"{name}_ci"] = list(wilson_ci(k, n))
    result["operating_point"] = operating_point_problem(result)
    waits = worklist_waits(labels, ranking, minutes_per_study=minutes_per_study)
    result["waits"] = vars(waits)
    result["minutes_per_study"] = minutes_per_study
    if shifts:
        from .robustness import model_robustness

        result["robustness"] = model_robustness(scorer, [Path(r.path) for r in results], labels,
                                                progress=shift_progress)
    result["overlap"] = training_overlap(scorer.model.card, base, split,
                                         [Path(r.path) for r in results])
    try:
        earlier_shifts = "robustness" in json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        earlier_shifts = False
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        # flag as in a worklist (at or above the threshold, or out of distribution: read as
        # flagged); the metrics at the threshold count above_threshold.
        # distance: to the training images in the model's features; domain_distance: in grey
        # levels, layout and sharpness (empty for models saved without that check).
        # logit: the score as a logit, by which AUROC, AUPRC and the waits rank (a score can
        # round to 1.0).
        w.writerow(["path", "label", "score", "logit", "flag", "above_threshold", "ood",
                    "distance", "domain_distance", "use"])
        for r, y, rank in zip(results, labels, ranking, strict=True):
            # Enough digits that a logit reproduces the ranking and above_threshold (against
            # the card's threshold_logit; cards without one: the score, to 10 decimals).
            w.writerow([r.path, int(y), f"{r.score:.10f}", repr(float(rank)), max(r.flag, r.ood),
                        r.flag, r.ood, f"{r.distance:.3f}",
                        "" if np.isnan(r.domain_distance) else f"{r.domain_distance:.3f}",
                        CSV_NOTE])
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot_roc(labels, result, out / "roc.png", ranking)
    _plot_scores(labels, scores, flagged, t, result, out / "scores.png")
    if shifts:
        _plot_robustness(result, out / "robustness.png")
    elif earlier_shifts:       # the replaced evaluation's picture, of another model or data
        (out / "robustness.png").unlink(missing_ok=True)
    return result


def validation_low(value: float, studies: float | None) -> float:
    """The lowest a proportion measured on validation (``value`` of ``studies``) plausibly is:
    the Wilson interval's lower end, so that a test interval below it is worse beyond chance
    on both sides. Cards before the counts were kept: ``value`` less 0.05 (a few hundred
    validation studies)."""
    if not (np.isfinite(value) and 0 <= value <= 1):   # a hand-edited card: no judgement
        return -np.inf
    whole = (isinstance(studies, (int, float)) and not isinstance(studies, bool)
             and np.isfinite(studies) and studies >= 1 and float(studies).is_integer())
    if not whole:
        return value - 0.05
    return wilson_ci(round(value * studies), int(studies))[0]


def operating_point_problem(result: dict[str, Any]) -> str | None:
    """Why the operating point chosen on validation does not hold on the evaluated studies
    (an evaluation's ``result``, with its validation values), or None: sensitivity's or
    specificity's interval lies below what validation plausibly gave, or the specificity is
    under 0.05, or the sensitivity 0.10 under its target."""
    target = float(result.get("target_sensitivity") or 0.95)
    validation = result.get("validation") or {}
    worse = [f"{key} {result[key]:.3f} [{result[f'{key}_ci'][0]:.3f}, "
             f"{result[f'{key}_ci'][1]:.3f}] against {validation[key]:.3f} on validation"
             for key, count in (("sensitivity", "abnormal"), ("specificity", "normal"))
             if isinstance(validation.get(key), (int, float))
             and result[f"{key}_ci"][1] < validation_low(validation[key], validation.get(count))]
    if not (worse or result["specificity"] < 0.05 or result["sensitivity"] < target - 0.10):
        return None
    stored = threshold_text(result["threshold"], result.get("threshold_logit"))
    return (f"at the stored threshold {stored}, "
            + ("; ".join(worse) if worse else f"sensitivity {result['sensitivity']:.3f} and "
               f"specificity {result['specificity']:.3f}")
            + f": the operating point chosen on validation (for {target:.0%} sensitivity) "
            "does not hold on these studies")


def training_overlap(card: Any, base: Path, split: str | None,
                     files: Sequence[Path] = ()) -> str | None:
    """Why the evaluated images include the model's own training or validation images (the
    numbers are then optimistic), or None. A folder of label sub-folders was split into
    training and validation whole; of a prepared dataset, its train and val splits were used.
    ``files``: the evaluated images, to catch links into a training folder from elsewhere."""
    data = card.training_data or {}
    here = base.resolve()
    repo = Path(__file__).resolve().parents[3]       # bundled cards name ../shared/... from there
    # The evaluated images and, for a prepared dataset, the files they were prepared from.
    evaluated = {f.resolve() for f in files} | _sources(base, [split] if split else None)
    # Where it was trained: resolved when training (cards since session 20), if it is still
    # there; else as given, guessed from here or from the repository (bundled cards name
    # ../shared/... from there, and a moved checkout or another machine has its own).
    resolved = data.get("root_resolved")
    roots = ({resolved} if resolved and Path(resolved).exists() else
             {*(data.get("sources") or []), data.get("root")}) - {None, ""}
    checked: set[Path] = set()
    for root in sorted(roots):
        given = Path(root)
        for place in ([given] if given.is_absolute() else [Path.cwd() / given, repo / given]):
            if not place.exists() or place.resolve() in checked:
                continue
            place = place.resolve()
            checked.add(place)
            if split is not None:        # a prepared dataset: only its test split is unseen
                if place == here and split in ("train", "val"):
                    return (f"the {split} split of {base} is what {card.name} was trained and "
                            "calibrated on")
            elif place == here or place in here.parents or here in place.parents:
                return f"{card.name} was trained and calibrated on {root}, which holds these images"
            seen = _training_files(place)
            linked = sum(f in seen if seen is not None else f.is_relative_to(place)
                         for f in evaluated)
            if linked:
                return (f"{linked} of these images {'is' if linked == 1 else 'are'} (links to, "
                        f"or prepared from) training or validation images of {root}, which "
                        f"{card.name} was trained and calibrated on")
            copied = _byte_copies(evaluated, seen if seen is not None else place)
            if copied:
                return (f"{copied} of these images {'is a copy' if copied == 1 else 'are copies'}"
                        f" of training or validation images of {root}, which {card.name} was "
                        "trained and calibrated on")
    return None


def _sources(place: Path, splits: Sequence[str] | None) -> set[Path]:
    """The files a prepared dataset's ``splits`` rows were prepared from (its manifest's
    ``source`` column), resolved; empty for a folder of label sub-folders."""
    manifest = manifest_of(place)
    if manifest is None:
        return set()
    from ..data.prepare import read_manifest

    found = set()
    for row in read_manifest(manifest):
        if row.get("source") and (splits is None or row.get("split") in splits):
            # Absolute since session 20; before, as given to `prepare`, relative to where it
            # ran: guessed from here.
            source = Path(row["source"])
            for candidate in ([source] if source.is_absolute() else [Path.cwd() / source]):
                if candidate.exists():
                    found.add(candidate.resolve())
                    break
    return found


def _training_files(place: Path) -> set[Path] | None:
    """The train and val images of a prepared dataset (its test split was not seen in
    training) and the files they were prepared from, resolved; None for a folder of label
    sub-folders, which was used whole."""
    if manifest_of(place) is None:
        return None
    try:
        return {f.path.resolve() for f in labelled_files(place, ("train", "val"))} | \
            _sources(place, ("train", "val"))
    except DatasetError:
        return set()


#: Bytes read first to tell files of one size apart (arrays of one shape all have one size).
HEAD_BYTES = 65536


def _byte_copies(evaluated: set[Path], training: set[Path] | Path) -> int:
    """How many ``evaluated`` files are byte for byte a training file (``training``: the files,
    or a folder used whole) without being one: a copy made with `cp`. Sizes first, then the
    first :data:`HEAD_BYTES`, so only likely copies are read whole. A file of one grey level
    throughout is no picture, and two blank files are not copies of each other."""
    from ..io import find_images

    try:
        known = training if isinstance(training, set) else \
            {f.resolve() for f in find_images([training])}
    except MedEnhanceError:
        return 0
    by_size: dict[int, list[Path]] = {}
    for f in known:
        if f.is_file():
            by_size.setdefault(f.stat().st_size, []).append(f)

    def digest(f: Path, whole: bool) -> str | None:
        try:
            with open(f, "rb") as fh:
                return hashlib.sha1(fh.read() if whole else fh.read(HEAD_BYTES)).hexdigest()
        except OSError:           # unreadable, or gone since: no match
            return None

    def a_picture(f: Path) -> bool:
        try:
            pixels = read_image(f).pixels
        except MedEnhanceError:
            return False
        return bool(pixels.max() > pixels.min())

    # Each training file is read at most twice (its head, then whole if an evaluated file has
    # the same head), whatever the number of evaluated files.
    heads: dict[int, dict[str, list[Path]]] = {}
    wholes: dict[tuple[int, str], set[str]] = {}
    copies = 0
    for f in evaluated - known:
        if not f.is_file():
            continue
        size = f.stat().st_size
        if size not in heads:
            heads[size] = {}
            for g in by_size.get(size, []):
                if (head := digest(g, False)) is not None:
                    heads[size].setdefault(head, []).append(g)
        head = digest(f, False)
        if head is None or head not in heads[size]:
            continue
        if (size, head) not in wholes:
            wholes[size, head] = {d for g in heads[size][head]
                                  if (d := digest(g, True)) is not None}
        if digest(f, True) in wholes[size, head] and a_picture(f):
            copies += 1
    return copies


def _plot_robustness(result: dict, path: Path) -> None:
    """AUROC per simulated acquisition change, all studies or one class changed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rob = result["robustness"]
    names = list(rob["shifts"])
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 2.2))
    for k, (mode, label) in enumerate((("all", "all studies changed"),
                                       ("normal_only", "normal studies only"),
                                       ("abnormal_only", "abnormal studies only"))):
        ax.barh(y + (k - 1) * 0.27, [rob["shifts"][n][mode] for n in names], height=0.27,
                label=label)
    ax.axvline(rob["clean"], c="k", ls="--", lw=1, label=f"unchanged {rob['clean']:.3f}")
    low = min(0.5, min(v for row in rob["shifts"].values() for v in row.values()) - 0.02)
    ax.set(yticks=y, yticklabels=names, xlim=(max(0.0, low), 1.0), xlabel="AUROC",
           title=f"{result['model']}: AUROC under simulated acquisition changes, mean "
                 f"{rob['robust_auroc']:.3f}\n({NOTE})")
    ax.title.set_fontsize(8)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_scores(labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray, threshold: float,
                 result: dict, path: Path) -> None:
    """Histograms of the normal and the abnormal studies' scores, with the operating point:
    where the two overlap is where the worklist order is unsure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.linspace(0, 1, 41)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
        s = scores[labels == value]
        ax.hist(s, bins=bins, alpha=0.55, color=colour,
                label=f"{name}: {int(flagged[labels == value].sum())} of {len(s)} flagged")
    ax.axvline(threshold, c="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="score (calibrated probability of abnormal)", ylabel="studies",
           title=f"{result['model']} ({NOTE})")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_roc(labels: np.ndarray, result: dict, path: Path, ranking: np.ndarray) -> None:
    """The ROC curve of ``ranking`` (the logits), and the operating point of ``result``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, ranking)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(fpr, tpr, label=f"AUROC {result['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    sens, spec = result["sensitivity"], result["specificity"]
    stored = threshold_text(result["threshold"], result.get("threshold_logit"))
    ax.plot([1 - spec], [sens], "o", label=f"threshold {stored}: sens {sens:.2f}, "
                                           f"spec {spec:.2f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity",
           title=f"{result['model']} ({NOTE})")
    ax.title.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
