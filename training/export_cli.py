"""``hazeflow export msfgnet|msfgnet-refine|rigan --weights FILE --out FILE.onnx``."""
from __future__ import annotations

import importlib

EXPORTERS = {"msfgnet": "training.train_msfgnet", "msfgnet-refine": "training.train_refine",
             "rigan": "training.train_rigan"}


def main(args) -> int:
    return int(importlib.import_module(EXPORTERS[args.model]).export(args) or 0)
