"""Copy a finished run's best checkpoint into the package as a bundled model.

    .venv/bin/python configs/bundle.py runs/xray-denoise [TRAINING_STDOUT_LOG]

Writes ``src/medenhance/weights/NAME.safetensors`` (parameters in float16, buffers float32) and
``NAME.json`` (the run's model card; for denoisers the per-epoch history from ``log.csv`` is added
so that reports can plot training curves), and keeps the record in ``configs/logs/RUN/`` (the run
folder's name, so both stages of a fine-tuned model keep theirs):
``history.csv`` (per epoch), the run's ``loss.png`` if any, and the training command's output.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import torch

from medenhance.models.card import LoadedModel, load_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def resave_unchanged(path: Path, loaded: LoadedModel,
                     aux: dict[str, torch.Tensor] | None = None) -> None:
    """Write bundled model ``path`` back with ``loaded``'s (changed) card and the tensors beside
    its network (``aux``, by default ``loaded.aux``), in float16 as bundled, and check that the
    network and those tensors load back unchanged: the card scripts (card_*.py) add to a card,
    never change the weights."""
    aux = loaded.aux if aux is None else aux
    before = {k: v.clone() for k, v in loaded.network.state_dict().items()}
    kept = {k: v.clone() for k, v in aux.items()}
    save_checkpoint(loaded.network, loaded.card, path, dtype=torch.float16, aux=aux)
    again = load_model(path)
    assert all(torch.equal(before[k], v) for k, v in again.network.state_dict().items())
    assert set(again.aux) == set(kept)
    assert all(torch.equal(kept[k], v) for k, v in again.aux.items())


def main(run: Path, stdout_log: Path | None) -> None:
    loaded = load_model(run / "best.safetensors")
    card = loaded.card
    if (run / "log.csv").exists():
        with open(run / "log.csv", newline="") as fh:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        for h in history:
            h["epoch"] = int(h["epoch"])
        card.extra["history"] = history
    history = card.extra.get("history", [])
    target = save_checkpoint(loaded.network, card,
                             ROOT / "src" / "medenhance" / "weights" / f"{card.name}.safetensors",
                             dtype=torch.float16, aux=loaded.aux)
    logs = ROOT / "configs" / "logs" / run.name
    logs.mkdir(parents=True, exist_ok=True)
    if history:
        with open(logs / "history.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    if (run / "loss.png").exists():
        shutil.copyfile(run / "loss.png", logs / "loss.png")
    if stdout_log is not None:
        shutil.copyfile(stdout_log, logs / "train.log")
    print(f"bundled {card.name}: {target} ({target.stat().st_size / 1e6:.2f} MB), record in {logs}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
