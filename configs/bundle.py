"""Copy a finished run's best checkpoint into the package as a bundled model.

    .venv/bin/python configs/bundle.py runs/xray-denoise

Writes ``src/medenhance/weights/NAME.safetensors`` + ``NAME.json`` (the run's model card, with the
per-epoch history from ``log.csv`` so that reports can plot the training curves) and copies the
run's ``log.csv`` and ``loss.png`` to ``configs/logs/NAME/`` for the record.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(run: Path) -> None:
    card = json.loads((run / "best.json").read_text())
    name = card["name"]
    with open(run / "log.csv", newline="") as fh:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    for h in history:
        h["epoch"] = int(h["epoch"])
    card.setdefault("extra", {})["history"] = history
    weights = ROOT / "src" / "medenhance" / "weights"
    shutil.copyfile(run / "best.safetensors", weights / f"{name}.safetensors")
    (weights / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    logs = ROOT / "configs" / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    for f in ("log.csv", "loss.png"):
        shutil.copyfile(run / f, logs / f)
    print(f"bundled {name}: {weights / name}.safetensors, logs in {logs}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
