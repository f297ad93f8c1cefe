"""Training: :func:`fit` runs a :class:`TrainConfig` to a checkpoint, and resumes after interruption.

A run folder holds ``config.yaml`` (as run), ``log.csv`` (one row per epoch), ``loss.png``,
``last.pt`` (model + optimizer + history, written atomically after every epoch, for ``--resume``)
and ``best.safetensors`` + ``best.json`` (weights and model card of the epoch with the highest
validation PSNR). Data are drawn from ``(seed, epoch, index)``, so a resumed run continues with
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.datasets import DegradationMixture, PatchDataset, load_split, validation_pairs
from ..data.prepare import read_manifest
from ..errors import ConfigError
from ..io._files import atomic_write
from ..metrics import psnr, ssim
from ..models.card import (ModelCard, check_registration, load_model, resolve_model,
                           save_checkpoint, user_dir)
from ..models.registry import create_model
from .config import TrainConfig, config_from_dict
from .losses import build_loss

LOG_COLUMNS = ["epoch", "train_loss", "val_psnr", "val_ssim", "val_psnr_input", "val_ssim_input",
               "lr", "seconds"]


@dataclass
class FitResult:
    run_dir: Path
    best: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str = "finished"
    #: Validation metrics of the model a fine-tuning run started from (best epoch 0 when no
    #: epoch beat it); None for a run from scratch or a resumed one.
    start: dict[str, float] | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    return torch.device(name)


def _lr_at(config: TrainConfig, epoch: int) -> float:
    o = config.optim
    if o.schedule == "constant" or o.epochs == 1:
        return o.lr
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * epoch / (o.epochs - 1)))


@torch.no_grad()
def validate(model: torch.nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> dict[str, float]:
    """Mean PSNR/SSIM (dB / unitless, on [0, 1]) of the model output and of the degraded input."""
    model.eval()
    out: dict[str, list[float]] = {"val_psnr": [], "val_ssim": [], "val_psnr_input": [],
                                   "val_ssim_input": []}
    for noisy, clean in pairs:
        pred = model(noisy.to(device)).clamp(0, 1).float().cpu().numpy()[0, 0]
        ref, deg = clean.numpy()[0, 0], noisy.numpy()[0, 0]
        out["val_psnr"].append(float(psnr(ref, pred)))
        out["val_ssim"].append(float(ssim(ref, pred)))
        out["val_psnr_input"].append(float(psnr(ref, deg)))
        out["val_ssim_input"].append(float(ssim(ref, deg)))
    model.train()
    return {k: float(np.mean(v)) for k, v in out.items()}


def loss_axis_scale(losses: list[float]) -> str:
    """"log" for training losses, unless one is not positive (the PSNR loss is negative)."""
    return "log" if losses and min(losses) > 0 else "linear"


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Training loss and validation PSNR per epoch, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [h["train_loss"] for h in history], marker=".")
    a.set(xlabel="epoch", ylabel="training loss", title="loss",
          yscale=loss_axis_scale([r["train_loss"] for r in history]))
    b.plot(epochs, [h["val_psnr"] for h in history], marker=".", label="model")
    b.plot(epochs, [h["val_psnr_input"] for h in history], ls="--", label="degraded input")
    b.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), overwrite=True)
    plt.close(fig)


def _write_log(history: list[dict[str, float]], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for row in history:
                writer.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                                 for k, v in row.items() if k in LOG_COLUMNS})
    atomic_write(path, write, overwrite=True)


def _card(config: TrainConfig, model: torch.nn.Module, metrics: dict[str, Any],
          data_info: dict[str, Any], extra: dict[str, Any]) -> ModelCard:
    return ModelCard(
        name=config.name, architecture=config.model.name, arguments=dict(config.model.args),
        task=config.task, modality=config.modality, scale=int(getattr(model, "scale", 1)),
        description=config.description, training_data=data_info,
        degradations=list(config.data.degradations), config=config.to_dict(), metrics=metrics,
        extra=extra)


def _initialise(model: torch.nn.Module, config: TrainConfig) -> dict[str, Any]:
    """Copy the weights of ``config.model.init_from`` into ``model``; what the card records."""
    source = load_model(config.model.init_from)
    card = source.card
    mismatch = ConfigError(
        f"model.init_from {config.model.init_from!r} is {card.architecture} "
        f"{card.arguments or ''}, not {config.model.name} {config.model.args or ''}".rstrip())
    info = {"model": card.name, "path": str(Path(source.path).resolve())}
    if card.architecture != config.model.name:
        raise mismatch
    if card.arguments == dict(config.model.args):
        model.load_state_dict(source.network.state_dict())
    elif hasattr(model, "initialise_from"):
        # Same architecture, other arguments: the model knows how to grow from the smaller one.
        try:
            model.initialise_from(source.network)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"{mismatch}: {str(exc).splitlines()[0]}") from None
        info["grown_from"] = dict(card.arguments)
    else:
        raise mismatch
    if card.metrics.get("epoch") is not None:
        info["epoch"] = card.metrics["epoch"]
    return info


Progress = Callable[[int, int, dict[str, float]], None]


#: What a run writes in its folder (and --overwrite removes).
RUN_FILES = ("last.pt", "best.safetensors", "best.json", "log.csv", "loss.png", "config.yaml")
#: The first line of a run's config.yaml: a config of the user's own is never replaced.
RUN_CONFIG_MARK = "# medenhance train: the config as run (edit a copy, not this file)\n"


def fit(config: TrainConfig, *, resume: bool = False, progress: Progress | None = None,
        log: Callable[[str], None] = print, overwrite: bool = False) -> FitResult:
    """Train ``config``; ``progress(step, total_steps, info)`` is called after each batch.

    Raises
    ------
    ConfigError
        The run folder already holds a run, or a model of the config's name is registered, and
        neither ``resume`` nor ``overwrite`` is given; or the saved run's config differs from
        ``config`` in the model or the data.
    """
    config.validate()
    run = config.run_dir
    last = run / "last.pt"
    if config.model.init_from and not config.model.args:
        # Fine-tuning a model as it is: a config that names no arguments takes the given
        # model's (a bundled denoiser grown to 8 middle convolutions is not the default 4). A
        # resumed run takes what it started with: the given model may have moved or changed.
        if resume and last.exists():
            saved = config_from_dict(torch.load(last, map_location="cpu",
                                                weights_only=True)["config"]).model
            if (saved.name, saved.init_from) == (config.model.name, config.model.init_from):
                config.model.args = dict(saved.args)
        else:
            card_path = resolve_model(config.model.init_from).with_suffix(".json")
            source = ModelCard.from_json(card_path.read_text(), str(card_path))
            if source.architecture == config.model.name:
                config.model.args = dict(source.arguments)
    if resume and not last.exists():
        raise ConfigError(f"{run}: nothing to resume (no last.pt)")
    own = run / "config.yaml"
    if own.is_file() and not last.exists() and \
            not own.read_text(errors="replace").startswith(RUN_CONFIG_MARK):
        # A config of the user's own there (output_dir: the folder it lies in) was replaced
        # by the run's copy, its comments lost, even without --overwrite.
        raise ConfigError(f"{own} is not a config a run wrote (your own?), and a run writes "
                          "its config there: set output_dir to another folder")
    # (A config.yaml alone is the run's copy from a start stopped before its first epoch.)
    earlier = [name for name in RUN_FILES if (run / name).exists() and name != "config.yaml"]
    if earlier and not resume and not overwrite:
        raise ConfigError(f"{run} already holds a run ({', '.join(earlier)}); pass --resume to "
                          "continue it, --overwrite to start it again, or set output_dir to a "
                          "new folder")
    if config.register:   # a resumed run replaces the model it registered itself
        check_registration(config.name, run / "best.safetensors", overwrite=overwrite or resume,
                           log=log)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    amp = config.amp and device.type == "cuda"

    mixture = DegradationMixture(config.data.degradations)
    header = read_manifest(config.data.manifest)[:1]
    if header and "patient_id" not in header[0]:
        raise ConfigError(f"{config.data.manifest}: not a medenhance manifest (no patient_id "
                          "column; make one with `medenhance prepare`)")
    train_images = load_split(config.data.manifest, config.data.train_split)
    val_images = load_split(config.data.manifest, config.data.val_split)
    extra = [(load_split(e["manifest"], e.get("split", "train")), float(e.get("weight", 0)))
             for e in config.data.extra_train]
    dataset = PatchDataset(train_images, mixture, patch_size=config.data.patch_size,
                           patches_per_epoch=config.data.patches_per_epoch,
                           augment=config.data.augment, seed=config.seed, extra=extra)
    try:
        model = create_model(config.model.name, **config.model.args).to(device)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.args {config.model.args} do not fit {config.model.name}: "
                          f"{exc}") from None
    init_info = _initialise(model, config) if config.model.init_from and not resume else None
    multiple = int(getattr(model, "size_multiple", 1))
    if config.data.patch_size % multiple:
        raise ConfigError(f"data.patch_size must be a multiple of {multiple} for "
                          f"{config.model.name}")
    val_pairs = validation_pairs(val_images, mixture, crop=config.data.val_crop,
                                 limit=config.data.val_images, multiple=multiple,
                                 seed=config.seed)
    loader = DataLoader(dataset, batch_size=config.optim.batch_size, shuffle=False,
                        drop_last=True, num_workers=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr,
                                 weight_decay=config.optim.weight_decay)
    loss_fn = build_loss(config.loss)
    rows = read_manifest(config.data.manifest)
    data_info = {
        "manifest": str(Path(config.data.manifest).resolve()),   # from any folder
        "sources": sorted({str(Path(r["source"]).parent) for r in rows})[:20],
        "images": {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "val", "test")},
        "patients": {s: len({r["patient_id"] for r in rows if r["split"] == s})
                     for s in ("train", "val", "test")},
    }
    if config.data.extra_train:
        data_info["extra_train"] = []
        for entry, (images, share) in zip(config.data.extra_train, extra):
            split = entry.get("split", "train")
            extra_rows = read_manifest(entry["manifest"], split)
            data_info["extra_train"].append({
                "manifest": str(entry["manifest"]), "split": split, "share": share,
                "sources": sorted({str(Path(r["source"]).parent) for r in extra_rows})[:20],
                "images": len(images),
                "patients": len({r["patient_id"] for r in extra_rows})})
    if resume:
        init_info = torch.load(last, map_location="cpu", weights_only=True).get("init_from")
    if init_info:
        data_info["initialised_from"] = init_info

    history: list[dict[str, float]] = []
    start_epoch, best_psnr, best_epoch, bad_epochs, elapsed = 0, -math.inf, 0, 0, 0.0
    if resume:
        state = torch.load(last, map_location=device, weights_only=True)
        saved = config_from_dict(state["config"])
        if saved.model != config.model:
            raise ConfigError(f"{run}: saved run used model {saved.model}, not {config.model}")
        if saved.data != config.data:
            changed = [f.name for f in dataclasses.fields(saved.data)
                       if getattr(saved.data, f.name) != getattr(config.data, f.name)]
            raise ConfigError(f"{run}: saved run used other data settings "
                              f"({', '.join('data.' + c for c in changed)}); its best epoch "
                              "was chosen on that validation, so resume with the same data")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        start_epoch, best_psnr, best_epoch = state["epoch"] + 1, state["best_psnr"], state["best_epoch"]
        bad_epochs, elapsed = state["bad_epochs"], state["elapsed"]
        torch.set_rng_state(state["torch_rng"])
        if start_epoch >= config.optim.epochs:     # it said "resuming at epoch 7" of 6
            raise ConfigError(f"{run}: the run has finished its {start_epoch} epochs (best epoch "
                              f"{best_epoch}); raise optim.epochs to train on")
        if config.max_minutes is not None and elapsed >= config.max_minutes * 60:
            raise ConfigError(f"{run}: the run has used its max_minutes {config.max_minutes:g} "
                              f"({elapsed / 60:.1f} min, resumes included); raise max_minutes "
                              "to train on")
        log(f"resuming {run} at epoch {start_epoch + 1}")
    if overwrite and not resume:     # a fresh start: nothing of the earlier run may be mixed in
        for name in RUN_FILES:
            (run / name).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write(run / "config.yaml",
                 lambda tmp: Path(tmp).write_text(RUN_CONFIG_MARK + config.to_yaml()),
                 overwrite=True)

    start = None
    if init_info is not None:
        # A fine-tuning run must beat the model it starts from, on the same validation pairs:
        # it reported and registered a worse "best" (32.01 dB after 32.92 dB at the start).
        start = validate(model, val_pairs, device)
        best_psnr = start["val_psnr"]
        log(f"starting model {config.model.init_from}: val PSNR {start['val_psnr']:.2f} dB "
            f"(input {start['val_psnr_input']:.2f})  SSIM {start['val_ssim']:.4f}; an epoch "
            "must beat it to become the best")
        card = _card(config, model, {**start, "epoch": 0}, data_info,
                     {"device": str(device), "train_minutes": 0.0, "history": []})
        save_checkpoint(model, card, run / "best.safetensors",
                        dtype=getattr(torch, config.weights_dtype))

    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.optim.epochs
    stopped = "finished"
    model.train()
    for epoch in range(start_epoch, config.optim.epochs):
        if config.max_minutes is not None and elapsed >= config.max_minutes * 60:
            stopped = (f"time limit of {config.max_minutes:g} min (raise max_minutes and "
                       "--resume to train on)")
            break
        t0 = time.perf_counter()
        lr = _lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dataset.set_epoch(epoch)
        losses = []
        for i, (noisy, clean) in enumerate(loader):
            noisy, clean = noisy.to(device), clean.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(noisy)
            loss = loss_fn(out.float(), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            if progress:
                progress(epoch * steps_per_epoch + i + 1, total,
                         {"epoch": epoch + 1, "loss": float(np.mean(losses[-50:]))})
        metrics = validate(model, val_pairs, device)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **metrics, "lr": lr,
               "seconds": seconds}
        history.append(row)
        improved = metrics["val_psnr"] > best_psnr
        if improved:
            best_psnr, best_epoch, bad_epochs = metrics["val_psnr"], epoch + 1, 0
            card = _card(config, model, {**metrics, "epoch": epoch + 1}, data_info,
                         {"device": str(device), "train_minutes": round(elapsed / 60, 1),
                          "history": [{k: round(v, 6) for k, v in h.items()} for h in history]})
            save_checkpoint(model, card, run / "best.safetensors",
                            dtype=getattr(torch, config.weights_dtype))
        else:
            bad_epochs += 1
        log(f"epoch {epoch + 1}/{config.optim.epochs}  loss {row['train_loss']:.5f}  "
            f"val PSNR {metrics['val_psnr']:.2f} dB (input {metrics['val_psnr_input']:.2f})  "
            f"SSIM {metrics['val_ssim']:.4f}  lr {lr:.2e}  {seconds:.0f}s"
            + ("  *best" if improved else ""))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "history": history, "epoch": epoch, "best_psnr": best_psnr,
                 "best_epoch": best_epoch, "bad_epochs": bad_epochs, "elapsed": elapsed,
                 "config": config.to_dict(), "torch_rng": torch.get_rng_state(),
                 "init_from": init_info}
        atomic_write(last, lambda tmp: torch.save(state, tmp), overwrite=True)
        _write_log(history, run / "log.csv")
        plot_history(history, run / "loss.png", config.name)
        if config.patience and bad_epochs >= config.patience:
            stopped = f"early stop: no improvement for {config.patience} epochs"
            break

    best = run / "best.safetensors"
    if config.register and best.exists():
        target = user_dir() / f"{config.name}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, target)
        shutil.copyfile(best.with_suffix(".json"), target.with_suffix(".json"))
        log(f"registered as model {config.name!r} ({target})")
    return FitResult(run, best, history, best_epoch, stopped, start)
