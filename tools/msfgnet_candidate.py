"""Write an MSFgNet training checkpoint as a hash-checked weights folder, for scoring before any shipping.

    python tools/msfgnet_candidate.py runs/msfgnet_unseen/best.pt out/candidate
    python tools/eval_families.py --split validation --weights out/candidate --methods msfgnet

The folder (msfgnet.onnx, msfgnet.pt, manifest.json) is written by the same code
as ``hazeflow adapt`` (training.adapt.write_output), so the stage loads it with
``weights: DIR`` and checks its hashes; nothing in ``weights/`` changes.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.adapt import write_output  # noqa: E402
from training.train_msfgnet import model_from_checkpoint  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    checkpoint, out = argv
    model, meta = model_from_checkpoint(checkpoint)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_output(model, Path(out), {"command": meta.get("command"), "epoch": meta.get("epoch"),
                                    "data": meta.get("data"), "checkpoint": checkpoint, "val_in_training": meta.get("val")})
    print(f"wrote {out} (epoch {meta.get('epoch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
