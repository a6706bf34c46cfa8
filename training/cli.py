"""``hazeflow train msfgnet|msfgnet-refine|rigan``: dispatch to the model's training loop."""
from __future__ import annotations

import importlib

LOOPS = {"msfgnet": "training.train_msfgnet", "msfgnet-refine": "training.train_refine",
         "rigan": "training.train_rigan"}


def main(args) -> int:
    return int(importlib.import_module(LOOPS[args.model]).main(args) or 0)
