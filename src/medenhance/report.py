"""A Markdown + HTML report of an evaluation folder (written by ``medenhance evaluate``).

Per-method table (mean and 95 % CI), then one figure per image: reference | degraded | each method,
with a zoomed inset of the most textured region and a difference map (output - reference) per
method, metrics in the captions; and the training curves of every model that has them in its card.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError, MedEnhanceError
from .evaluate import on_reference_scale
from .io import display_frames, find_images, read_image, stem

NOTE = "Research use only: not for diagnosis."


def _load_eval(folder: Path) -> tuple[dict[str, Any], list[dict[str, str]], str]:
    try:
        info = json.loads((folder / "evaluation.json").read_text())
        with open(folder / "per_image.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        summary = (folder / "summary.md").read_text()
    except FileNotFoundError as exc:
        raise DatasetError(f"{folder}: not an evaluation folder (missing {Path(exc.filename).name};"
                           " run `medenhance evaluate -o` first)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{folder}: unreadable evaluation ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("reference"), str) or \
            not isinstance(info.get("methods"), dict):
        raise DatasetError(f"{folder}/evaluation.json: not written by `medenhance evaluate` "
                           "(needs reference and methods)")
    if rows and not {"method", "image"} <= set(rows[0]):
        raise DatasetError(f"{folder}/per_image.csv: not written by `medenhance evaluate` "
                           "(needs the method and image columns)")
    # Paths inside the evaluation folder are stored relative to it; older evaluations stored
    # them as given on the command line, relative to where `evaluate` ran.
    info["reference"] = str(_located(folder, info["reference"]))
    info["methods"] = {m: str(_located(folder, d)) for m, d in info["methods"].items()}
    return info, rows, summary


def _caption(row: dict[str, str]) -> str:
    try:
        psnr, ssim = float(row["psnr"]), float(row["ssim"])
    except (KeyError, ValueError):      # metrics not computed, or not numbers
        return ""
    return "" if math.isnan(psnr) else f"PSNR {psnr:.2f} dB, SSIM {ssim:.3f}"


def _located(folder: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or not (folder / p).exists() else folder / p


def _files_by_name(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder).with_name(stem(p))): p for p in find_images([folder])}


def _zoom_box(ref: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most local variation (edges, texture)."""
    h, w = ref.shape
    size = min(size, h, w)
    grad = np.abs(np.diff(ref, axis=0))[:, :-1] + np.abs(np.diff(ref, axis=1))[:-1, :]
    best, corner = -1.0, (0, 0)
    step = max(size // 2, 1)
    for top in range(0, max(h - size, 0) + 1, step):
        for left in range(0, max(w - size, 0) + 1, step):
            score = float(grad[top: top + size, left: left + size].mean())
            if score > best:
                best, corner = score, (top, left)
    return corner


def image_figure(name: str, reference: np.ndarray, panels: list[tuple[str, np.ndarray, str]],
                 path: Path) -> None:
    """Row 1: images with the zoom box; row 2: zoomed insets; row 3: difference maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    columns = [("reference", reference, "")] + panels
    n = len(columns)
    zs = max(min(reference.shape) // 4, 16)
    top, left = _zoom_box(reference, zs)
    fig, axes = plt.subplots(3, n, figsize=(2.6 * n, 8.0), squeeze=False)
    diff_range = max(float(np.percentile(np.abs(p[1] - reference), 99.5)) for p in panels) or 0.05
    for j, (label, img, caption) in enumerate(columns):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[0, j].add_patch(Rectangle((left, top), zs, zs, fill=False, ec="yellow", lw=1))
        axes[0, j].set_title(label, fontsize=9)
        axes[0, j].set_xlabel(caption, fontsize=8)
        axes[1, j].imshow(img[top: top + zs, left: left + zs], cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
        axes[1, j].set_xlabel("zoom", fontsize=8)
        if j == 0:
            axes[2, j].axis("off")
        else:
            im = axes[2, j].imshow(img - reference, cmap="RdBu_r", vmin=-diff_range,
                                   vmax=diff_range)
            axes[2, j].set_xlabel(f"{label} - reference (±{diff_range:.3f})", fontsize=8)
        for row in range(3):
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
    fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.8)
    fig.suptitle(f"{name}  ({NOTE})", fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def curves_figure(histories: dict[str, list[dict[str, float]]], path: Path,
                  losses: dict[str, object] | None = None) -> int:
    """Training loss and validation PSNR per epoch of each model. ``losses``: each model's
    loss (its config's ``loss``); models trained with different losses get a loss panel each,
    since one axis made a PSNR loss of -39 and an L1 loss of 0.02 both flat lines. Returns
    the number of loss panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train.loop import loss_axis_scale

    kinds = {name: json.dumps((losses or {}).get(name), sort_keys=True) for name in histories}
    groups = [[n for n in histories if kinds[n] == kind] for kind in dict.fromkeys(kinds.values())]
    fig, axes = plt.subplots(1, len(groups) + 1, figsize=(4.5 * (len(groups) + 1), 3.4),
                             squeeze=False)
    colours = {name: f"C{i}" for i, name in enumerate(histories)}
    for a, names in zip(axes[0], groups, strict=False):
        for name in names:
            hist = histories[name]
            a.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], marker=".",
                   label=name, color=colours[name])
        values = [h["train_loss"] for n in names for h in histories[n]]
        spec = (losses or {}).get(names[0])
        a.set(xlabel="epoch", ylabel="training loss", yscale=loss_axis_scale(values),
              title="training loss" + (f" ({', '.join(map(str, spec))})"
                                       if isinstance(spec, dict) and len(groups) > 1 else ""))
        a.title.set_fontsize(9)
        a.legend(fontsize=8)
    b = axes[0, -1]
    for name, hist in histories.items():
        b.plot([h["epoch"] for h in hist], [h["val_psnr"] for h in hist], marker=".",
               label=name, color=colours[name])
    b.set(xlabel="epoch", ylabel="PSNR (dB)",
          title="validation PSNR (each on its own run's validation pairs)")
    b.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return len(groups)


def _history(method: str) -> tuple[list[dict[str, float]], object] | None:
    """A model's training history and loss (its card's), or None."""
    from .models.card import ModelCard, resolve_model

    try:
        card_path = resolve_model(method).with_suffix(".json")
        card = ModelCard.from_json(card_path.read_text(), str(card_path))
    except (MedEnhanceError, OSError):
        return None
    history = card.extra.get("history")
    loss = card.config.get("loss") if isinstance(card.config, dict) else None
    return (history, loss) if isinstance(history, list) and history else None


def _remove_earlier_figures(out: Path) -> None:
    """Remove the figures an earlier report in ``out`` shows (named in its report.md), so that
    the folder holds this report's only; no other file is touched."""
    try:
        earlier = (out / "report.md").read_text()
    except OSError:
        return
    for name in set(re.findall(r"\]\(((?:image_\d+|training_curves)\.png)\)", earlier)):
        (out / name).unlink(missing_ok=True)


def write_report(evaluation_dir: str | Path, output_dir: str | Path, *, max_images: int = 4
                 ) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (+ PNG figures) to ``output_dir``."""
    folder, out = Path(evaluation_dir), Path(output_dir)
    info, rows, summary = _load_eval(folder)
    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_figures(out)
    references = _files_by_name(Path(info["reference"]))
    methods: dict[str, str] = info["methods"]
    method_files = {m: _files_by_name(Path(d)) for m, d in methods.items() if Path(d).is_dir()}
    metric = {(r["method"], r["image"]): r for r in rows}
    names = sorted({r["image"] for r in rows})[:max_images]

    md = ["# Denoising report\n", f"*{NOTE}*\n",
          f"Reference images: `{info['reference']}`; methods: "
          + ", ".join(f"`{m}`" for m in methods) + ".\n", "## Summary (mean [95 % CI])\n",
          summary, "## Images\n"]
    for i, name in enumerate(names):
        if name not in references:      # a row whose reference is gone (or an edited table)
            continue
        ref_img = read_image(references[name])
        # The middle slice of a volume (its first is mostly empty), as viewers show it.
        shown = display_frames(ref_img)
        middle = len(shown) // 2
        ref = shown[middle].astype(np.float64)
        panels = []
        for method, files in method_files.items():
            if name not in files:
                continue
            test = on_reference_scale(ref_img, read_image(files[name]))
            test = display_frames(ref_img.with_pixels(test, "report"))[middle]
            r = metric.get((method, name), {})
            caption = _caption(r)
            panels.append((method, np.clip(test, 0, 1), caption))
        if not panels:
            continue
        fig_name = f"image_{i:02d}.png"
        image_figure(name, ref, panels, out / fig_name)
        captions = "; ".join(f"{m}: {c}" for m, _, c in panels if c)
        where = f" (slice {middle + 1} of {len(shown)})" if len(shown) > 1 else ""
        md.append(f"### {name}{where}\n\n![{name}]({fig_name})\n\n{captions}\n")
    found = {m: h for m in methods if (h := _history(m))}
    if found:
        curves_figure({m: h for m, (h, _) in found.items()}, out / "training_curves.png",
                      {m: loss for m, (_, loss) in found.items()})
        md.append("## Training curves\n\n![training curves](training_curves.png)\n")
    text = "\n".join(md)
    md_path = out / "report.md"
    md_path.write_text(text)
    html_path = out / "report.html"
    html_path.write_text(_to_html(text))
    return md_path, html_path


def _to_html(markdown: str) -> str:
    """Just enough Markdown for this report: headings, images, tables, emphasis, paragraphs."""
    body = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].startswith("|"):
                table.append([html.escape(c.strip()) for c in lines[i].strip("|").split("|")])
                i += 1
            head, rest = table[0], [r for r in table[2:]]
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                                  for r in rest) + "</table>")
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}" '
                        'style="max-width:100%">')
        elif line.startswith("*") and line.endswith("*"):
            body.append(f"<p><em>{html.escape(line.strip('*'))}</em></p>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>medenhance report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
