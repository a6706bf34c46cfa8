"""Interpolate two RI-GAN generators in weight space: (1 - alpha)·A + alpha·B.

For a model A and a continuation B trained from it (``hazeflow train rigan --init``): the
blend keeps more of A's skill on the old data while taking part of B's gain on the new (see
``training.common.interpolate_weights``). Score the result with tools/heldout_rigan.py before
shipping it.

usage: python tools/soup_rigan.py A.pt B.pt --alpha 0.7 --out OUT.pt   (state_dicts or last.pt files)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.common import interpolate_weights, save_checkpoint  # noqa: E402
from training.train_rigan import load_generator  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--alpha", type=float, required=True, help="weight of B, in [0, 1]")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    # load_generator checks that each file is an RI-GAN generator and that its tensors fit
    a, b = load_generator(args.a).state_dict(), load_generator(args.b).state_dict()
    try:
        blend = interpolate_weights(a, b, args.alpha)
    except ValueError as e:
        print(f"soup_rigan: {args.a} and {args.b}: {e}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, **blend)
    print(f"{args.out}: {1 - args.alpha:.2f}·{args.a} + {args.alpha:.2f}·{args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
