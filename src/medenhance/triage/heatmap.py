"""Pictures of where a triage model's score comes from, for the studies it flags.

Each picture is the frame the network saw (after its own cropping or equalisation), beside the
same frame with the model's evidence map (:meth:`.score.TriageScorer.evidence_maps`) laid over it
in colour. The colour scale is per image, from the map's median (transparent) to its maximum:
it shows where the model looked most abnormal, not how abnormal; the score says that.
``index.html`` shows them all, in worklist order, in a browser.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ..errors import MedEnhanceError
from ..io import read_image
from ..io._files import atomic_write, stem
from .data import keeps_aspect, model_inputs, triage_frames
from .score import NOTE, TriageResult, TriageScorer


def overlay(frame: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """``(H, 2W, 3)`` uint8: the grey frame, then the frame with ``evidence`` in colour."""
    grey = np.repeat(np.clip(frame, 0, 1)[..., None], 3, axis=2)
    low, high = float(np.median(evidence)), float(evidence.max())
    weight = np.clip((evidence - low) / (high - low), 0, 1) if high > low else \
        np.zeros_like(evidence)
    colour = colormaps["inferno"](weight)[..., :3]
    alpha = 0.6 * weight[..., None]
    blended = (1 - alpha) * grey + alpha * colour
    return (np.concatenate([grey, blended], axis=1) * 255 + 0.5).astype(np.uint8)


#: Heatmaps are enlarged (by whole pixels) to at least this height: at a model's input size
#: (128 px) they were thumbnails when opened on their own.
MIN_HEIGHT = 384


def enlarged(picture: np.ndarray) -> np.ndarray:
    """``picture`` repeated by a whole factor until it is :data:`MIN_HEIGHT` pixels high: each
    pixel the model saw stays one block, nothing is smoothed in."""
    factor = max(1, -(-MIN_HEIGHT // picture.shape[0]))
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


#: Height of the caption strip under each picture: a picture passed on alone still says what it
#: is and that it is not for diagnosis.
CAPTION_HEIGHT = 24


def captioned(picture: np.ndarray, text: str) -> np.ndarray:
    """``picture`` with a black strip of :data:`CAPTION_HEIGHT` pixels below it, ``text`` in white
    on it (cut to the width)."""
    strip = Image.new("RGB", (picture.shape[1], CAPTION_HEIGHT))
    ImageDraw.Draw(strip).text((6, 4), text, fill=(255, 255, 255),
                               font=ImageFont.load_default(size=14))
    return np.concatenate([picture, np.asarray(strip)], axis=0)


def write_heatmaps(scorer: TriageScorer, ranked: Sequence[tuple[int, TriageResult]],
                   folder: Path, progress: Callable[[list], Iterable] | None = None,
                   failures: list[str] | None = None) -> list[Path]:
    """One PNG per ``(rank, result)`` in ``folder``, named ``RANK_STEM.png``, of the study's
    most abnormal frame; an earlier run's ``RANK_STEM.png`` files there are removed first, so
    that the folder shows this worklist only (the caller decides whether it may). With
    ``failures``, a picture that cannot be made is listed there and the others still are."""
    size = int(scorer.info["size"])
    modality = scorer.model.card.modality
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("[0-9][0-9][0-9][0-9]_*.png"):   # an earlier run's pictures
        stale.unlink()
    done: list[tuple[int, TriageResult, Path]] = []
    items = list(ranked)
    for rank, result in (progress(items) if progress else items):
        target = folder / f"{rank:04d}_{stem(result.path)}.png"
        try:
            _, frame = triage_frames(read_image(result.path), size, index=[result.frame],
                                     keep_aspect=keeps_aspect(scorer.info))
            frame = model_inputs(frame, scorer.info)
            why = result.reading_note(modality) if result.ood else ""
            picture = captioned(enlarged(overlay(frame[0], scorer.evidence_maps(frame)[0])),
                                f"#{rank}  score {result.score:.3f}"
                                + (f"  {why.removesuffix(': read as flagged')}" if why else "")
                                + f"  {scorer.model.card.name}  ({NOTE})")
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", f"medenhance triage evidence map, {result.path}"
                          + (f"; {why}" if why else "") + f"; {NOTE}")
            atomic_write(target, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG",
                                                                           pnginfo=info),
                         overwrite=True)
        except MedEnhanceError as exc:
            if failures is None:
                raise
            failures.append(str(exc))
            continue
        done.append((rank, result, target))
    write_index(folder, done, scorer.model.card.name, modality)
    return [target for *_, target in done]


def write_index(folder: Path, rows: Sequence[tuple[int, TriageResult, Path]], model: str,
                modality: str) -> Path:
    """``folder/index.html``: the flagged studies in worklist order, each with its picture and,
    for one out of distribution, the reason (the worklist's note; ``modality``: the model's), to
    look through in a browser."""
    cells = []
    for rank, result, picture in rows:
        where = f", frame {result.frame}" if result.frames > 1 or result.frame else ""
        files = f", {result.files} files" if result.files > 1 else ""
        ood = f"; <b>{html.escape(result.reading_note(modality))}</b>" if result.ood else ""
        cells.append(
            f"<figure><img src=\"{html.escape(picture.name)}\" alt=\"rank {rank}\">"
            f"<figcaption>#{rank} score {result.score:.3f}{ood}<br>"
            f"<code>{html.escape(result.path)}</code>{where}{files}</figcaption></figure>")
    page = (f"<!doctype html><meta charset=\"utf-8\"><title>Flagged studies: {html.escape(model)}"
            "</title><style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;"
            "margin:.5em;vertical-align:top;max-width:45%}img{width:100%;image-rendering:"
            "pixelated}figcaption{font-size:.85em}</style>"
            f"<h1>Flagged studies, most likely abnormal first ({html.escape(model)})</h1>"
            f"<p><i>{NOTE}.</i> Left: the frame the model saw; right: where it looked most "
            "abnormal (scaled per image: where, not how much).</p>" + "".join(cells))
    target = folder / "index.html"
    atomic_write(target, lambda tmp: tmp.write_text(page), overwrite=True)
    return target
