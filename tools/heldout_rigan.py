"""Compare RI-GAN generators on held-out synthetic pairs (the model-selection set).

Pairs come from the training synthesis with seed 99, which no training run uses, over the
clear pool of configs/train_rigan.yaml: 96 crops of 128x128. Two sets: the synthesis without
composited skies (the set every earlier selection used, so numbers stay comparable) and the
same seed with a composited sky in every picture (airlight = the sky's colour; the case of
the sky defect in docs/models.md), and 96 crops of rendered rooms (training.data.rooms,
textured with the same pool). SOTS-indoor-dev is never used for selection (it is the
validation set of `hazeflow eval dehaze`).

usage: python tools/heldout_rigan.py WEIGHTS.pt [WEIGHTS.pt ...]   (state_dicts or last.pt files)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data.dehaze import HazeParams, SynthHazeDataset, clear_pool  # noqa: E402
from pipeline.commands.eval_dehaze import psnr, score_pair  # noqa: E402
from training.train_rigan import load_generator, resolve  # noqa: E402

SEED, CROPS = 99, 96


def heldout_pairs(count: int = CROPS, params: HazeParams = HazeParams(),
                  rooms: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    cfg = yaml.safe_load((ROOT / "configs" / "train_rigan.yaml").read_text())
    # the photo and video sources only: rendered rooms are their own set, and adding them to the
    # group draw would change every pair of the sets that earlier selections used
    clear = [dict(s, path=str(resolve(s["path"]))) if "path" in s else s for s in cfg["data"]["clear"]
             if not s.get("rooms")]
    ds = SynthHazeDataset(clear_pool(clear), patch=128, length=count, seed=SEED,
                          short_side=tuple(cfg["data"]["short_side"]), params=params)
    if rooms:
        return [ds.room_pair(np.random.default_rng([SEED, 0, i])) for i in range(count)]
    return [ds.pair(i) for i in range(count)]


def score(weights: str | Path, pairs) -> tuple[float, float]:
    gen = load_generator(weights).eval()
    p, s = [], []
    with torch.no_grad():
        for hazy, clear in pairs:
            x = torch.from_numpy(np.ascontiguousarray(hazy.transpose(2, 0, 1))[None].astype(np.float32) / 255)
            y = gen(x)
            y = y[0] if isinstance(y, (tuple, list)) else y
            out = (y[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
            scores = score_pair(out, clear)
            p.append(scores["PSNR"])
            s.append(scores["SSIM"])
    return float(np.mean(p)), float(np.mean(s))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    torch.set_num_threads(2)
    sets = {"no sky": heldout_pairs(), "sky": heldout_pairs(params=HazeParams(sky_prob=1.0)),
            "rooms": heldout_pairs(rooms=True)}
    for name, pairs in sets.items():
        ident = np.mean([psnr(h, c) for h, c in pairs])
        print(f"held-out synthetic, {name} (seed {SEED}, {len(pairs)} crops): hazy input PSNR {ident:.2f} dB")
    for w in argv:
        for name, pairs in sets.items():
            p, s = score(w, pairs)
            print(f"{w} [{name}]: PSNR {p:.2f} dB, SSIM {s:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
