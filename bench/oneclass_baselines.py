"""The one-class baselines the field starts from, against the bundled one-class models.

    .venv/bin/python bench/oneclass_baselines.py      # writes bench/oneclass_baselines.md
    .venv/bin/python bench/oneclass_baselines.py --only mri-triage \
        --output bench/oneclass_baselines-mri.md
    .venv/bin/python bench/oneclass_baselines.py --only xray-triage --baselines autoencoder \
        --output bench/oneclass_baselines-xray.md

The two committed tables come from the last two commands. The first, with Deep SVDD on the X-rays,
takes well over 1.5 hours on 2 cores (about 4 minutes per Deep SVDD pretraining epoch there).

Issue 5 asks to start from what the field uses for normal-only anomaly scores and keep the best by
measurement. The bundled models (self-supervised rotation/flip features with a Gaussian or a
patch memory) are compared here with the two classic ones, each trained on the same normal
training images as the bundled model (its config's data, size, crop and patient split):

* **Autoencoder reconstruction error**: a convolutional autoencoder (Gondara 2016, the package's
  ``autoencoder`` with five levels, so a 4x4x128 bottleneck at 128x128) learns to reproduce
  normal images; an image scores by (a) its mean squared reconstruction error, or (b) the 99th
  percentile of its squared error map smoothed by a Gaussian of 2 px (a local anomaly).
* **Deep SVDD** (Ruff et al., ICML 2018): a bias-free encoder, pretrained as an autoencoder,
  then trained to map normal images close to a fixed centre; the score is the squared distance
  to it.

Only the **validation** split is scored (AUROC unchanged and the mean under the simulated
acquisition changes of :mod:`medenhance.triage.robustness`); the test split is not touched.
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from medenhance.models.autoencoder import ConvAutoencoder
from medenhance.triage.data import load_labelled, model_inputs, train_val_split
from medenhance.triage.robustness import frame_scores, shifted_aurocs
from medenhance.triage.score import TriageScorer
from medenhance.triage.train import augment, load_triage_config

ROOT = Path(__file__).resolve().parents[1]
CASES = [("xray-triage", ROOT / "configs" / "xray-triage.yaml"),
         ("mri-triage", ROOT / "configs" / "mri-triage.yaml")]
AE_FILTERS = (16, 32, 64, 128, 128)
AE_EPOCHS = 30
SVDD_PRETRAIN_EPOCHS = 15
SVDD_EPOCHS = 30
BATCH = 32
BASELINES = ("autoencoder", "deep-svdd")


class BiasFreeEncoder(nn.Module):
    """Deep SVDD's encoder: no bias anywhere and batch norm without affine parameters, so that
    mapping every image onto the centre (a constant function) is not available."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 128), size: int = 128,
                 dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for w in widths:
            layers += [nn.Conv2d(c, w, 5, padding=2, bias=False),
                       nn.BatchNorm2d(w, eps=1e-4, affine=False), nn.LeakyReLU(0.1),
                       nn.MaxPool2d(2)]
            c = w
        self.conv = nn.Sequential(*layers)
        self.side = size // 2 ** len(widths)
        self.fc = nn.Linear(c * self.side ** 2, dim, bias=False)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class BiasFreeDecoder(nn.Module):
    """The encoder's mirror, for the autoencoder pretraining only."""

    def __init__(self, encoder: BiasFreeEncoder, dim: int = 128) -> None:
        super().__init__()
        widths = encoder.widths
        self.shape = (widths[-1], encoder.side, encoder.side)
        self.fc = nn.Linear(dim, int(np.prod(self.shape)), bias=False)
        layers: list[nn.Module] = []
        c = widths[-1]
        for w in reversed(widths):
            layers += [nn.BatchNorm2d(c, eps=1e-4, affine=False), nn.LeakyReLU(0.1),
                       nn.Upsample(scale_factor=2), nn.Conv2d(c, w, 5, padding=2, bias=False)]
            c = w
        layers += [nn.Conv2d(c, 1, 5, padding=2, bias=False), nn.Sigmoid()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, *self.shape))


def fit(model: nn.Module, images: np.ndarray, epochs: int, lr: float, weight_decay: float,
        loss_of: Callable[[torch.Tensor], torch.Tensor], label: str) -> None:
    """Mini-batch Adam over augmented normal ``images`` (N, H, W) with ``loss_of(batch)``."""
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    data = torch.from_numpy(images).unsqueeze(1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for i in range(0, len(data), BATCH):
            batch = augment(data[order[i: i + BATCH]], generator)
            loss = loss_of(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        if epoch == 0 or (epoch + 1) % 5 == 0:
            print(f"  {label} epoch {epoch + 1}/{epochs}: loss {total / len(data):.5f}",
                  flush=True)
    model.eval()


@torch.no_grad()
def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.asarray(frames, np.float32)).unsqueeze(1)
    return np.concatenate([fn(x[i: i + 64]).numpy() for i in range(0, len(x), 64)])


def autoencoder_scores(train: np.ndarray, info: dict
                       ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    torch.manual_seed(0)
    ae = ConvAutoencoder(filters=AE_FILTERS)
    fit(ae, train, AE_EPOCHS, 1e-3, 0.0, lambda b: F.mse_loss(ae(b), b), "autoencoder")

    def error_maps(frames: np.ndarray) -> np.ndarray:
        x = model_inputs(frames, info)
        return (in_batches(ae, x)[:, 0] - x) ** 2

    def mean_error(frames: np.ndarray) -> np.ndarray:
        return error_maps(frames).mean((1, 2))

    def local_error(frames: np.ndarray) -> np.ndarray:
        return np.array([np.percentile(gaussian_filter(e, 2.0), 99) for e in error_maps(frames)])

    return {"autoencoder, mean squared error": mean_error,
            "autoencoder, 99th percentile of the smoothed error map": local_error}


def deep_svdd_score(train: np.ndarray, info: dict, size: int
                    ) -> Callable[[np.ndarray], np.ndarray]:
    torch.manual_seed(0)
    encoder = BiasFreeEncoder(size=size)
    decoder = BiasFreeDecoder(encoder)
    pretrain = nn.Sequential(encoder, decoder)
    fit(pretrain, train, SVDD_PRETRAIN_EPOCHS, 1e-4, 1e-6,
        lambda b: F.mse_loss(pretrain(b), b), "Deep SVDD pretraining")
    centre = torch.from_numpy(in_batches(encoder, train).mean(0))
    # As Ruff et al.: a centre coordinate near zero is trivially matched by zero weights.
    centre = torch.where(centre.abs() < 0.1, torch.full_like(centre, 0.1) * centre.sign(), centre)
    centre[centre == 0] = 0.1
    fit(encoder, train, SVDD_EPOCHS, 1e-4, 1e-6,
        lambda b: ((encoder(b) - centre) ** 2).sum(1).mean(), "Deep SVDD")

    def distance(frames: np.ndarray) -> np.ndarray:
        return ((in_batches(encoder, model_inputs(frames, info)) - centre.numpy()) ** 2).sum(1)

    return distance


def main(only: str | None = None, baselines: tuple[str, ...] = BASELINES,
         output: Path = ROOT / "bench" / "oneclass_baselines.md") -> None:
    torch.set_num_threads(2)
    start = time.time()
    rows = []
    command = " ".join(["python bench/oneclass_baselines.py", *sys.argv[1:]])
    for name, config_path in CASES:
        if only and name != only:
            continue
        config = load_triage_config(config_path)
        data = load_labelled(config.data, config.normal_labels, config.size,
                             patient_regex=config.patient_regex)
        train, val = train_val_split(data, config.val_fraction, config.patient_split_seed,
                                     config.val_split)
        info = {"crop": config.crop, "equalize": config.equalize}
        normals = model_inputs(data.images[train][data.labels[train] == 0], info)
        frames, labels = data.images[val], data.labels[val]
        split = (f"{len(normals)} normal training images; validation {int((labels == 0).sum())} "
                 f"normal, {int((labels == 1).sum())} abnormal")
        print(f"{name}: {split}", flush=True)

        def measure(label: str, score: Callable[[np.ndarray], np.ndarray]) -> None:
            # Written after every baseline: a long run stopped early keeps what it measured.
            result = shifted_aurocs(score, frames, labels)
            print(f"  {label}: validation AUROC {result['clean']:.3f}, under changes "
                  f"{result['robust_auroc']:.3f}", flush=True)
            rows.append((name, label, result, split))
            write_report(rows, time.time() - start, command, output)

        if "autoencoder" in baselines:
            for label, score in autoencoder_scores(normals, info).items():
                measure(label, score)
        if "deep-svdd" in baselines:
            measure("Deep SVDD", deep_svdd_score(normals, info, config.size))
        measure(f"bundled `{name}`", frame_scores(TriageScorer(name)))


def write_report(rows: list, seconds: float, command: str, output: Path) -> None:
    lines = [
        "# One-class baselines (validation only)",
        "",
        f"Measured in one run on {dt.date.today()} with `{command}` on "
        f"CPU ({platform.machine()}, torch {torch.__version__}, Python "
        f"{sys.version.split()[0]}). Each baseline is trained on the normal training images of "
        "the bundled model's own split and scored on its validation split; the test split is "
        "not used. \"Under changes\": mean AUROC over the simulated acquisition changes of "
        "`medenhance.triage.robustness` (8 changes, each applied to all, normal-only and "
        "abnormal-only studies). Research use only.",
        "",
        "| data | score | validation AUROC | mean under changes | lowest under changes |",
        "|---|---|---|---|---|",
    ]
    for name, label, result, split in rows:
        worst = min(((v, f"{shift}, {mode.replace('_', ' ')}")
                     for shift, modes in result["shifts"].items() for mode, v in modes.items()))
        lines.append(f"| {name.split('-')[0]} ({split}) | {label} | {result['clean']:.3f} | "
                     f"{result['robust_auroc']:.3f} | {worst[0]:.3f} ({worst[1]}) |")
    lines += ["", f"Time so far {seconds:.0f} s.", ""]
    output.write_text("\n".join(lines))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=[name for name, _ in CASES],
                        help="measure one bundled model's data only")
    parser.add_argument("--baselines", nargs="+", choices=BASELINES, default=list(BASELINES))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "oneclass_baselines.md")
    args = parser.parse_args()
    main(args.only, tuple(args.baselines), args.output)
