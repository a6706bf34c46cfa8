"""Compare RI-GAN generators on held-out synthetic pairs (the model-selection set).

Pairs come from the training synthesis with seed 99, which no training run uses, over the
clear pool of configs/train_rigan.yaml: 96 crops of 128x128. Two sets: the synthesis without
composited skies (the set every earlier selection used, so numbers stay comparable) and the
same seed with a composited sky in every picture (airlight = the sky's colour; the case of
the sky defect in docs/models.md), and 96 crops of rendered rooms (training.data.rooms,
textured with the same pool). SOTS-indoor-dev is never used for selection (it is the
validation set of `hazeflow eval dehaze`).

With ``--stage``, the same three sets are drawn as whole square frames of ``--side`` pixels
(default 360, the short side of a 640x360 camera) and dehazed by the dehaze stage itself (ONNX
Runtime, the shipped host path: the network at ``internal_scale``, t and A applied at full size),
once per scale: this measures what the stage's resolution settings do, which 128x128 crops at
the network's own size cannot.

usage: python tools/heldout_rigan.py WEIGHTS.pt [WEIGHTS.pt ...]   (state_dicts or last.pt files)
       python tools/heldout_rigan.py --stage weights/rigan.onnx --scales 0.5 0.75 [--side 360] [--count 48]
                                     [--manifest M.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.data.dehaze import HazeParams, SynthHazeDataset, clear_pool  # noqa: E402
from pipeline.commands.eval_dehaze import psnr, score_pair  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.stages.dehaze import DehazeStage  # noqa: E402
from training.train_rigan import load_generator, resolve  # noqa: E402

SEED, CROPS = 99, 96


def heldout_pairs(count: int = CROPS, params: HazeParams = HazeParams(), rooms: bool = False,
                  side: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``side``: whole side x side frames (pictures scaled to that short side) instead of
    128x128 crops of pictures with a 160-320 px short side."""
    cfg = yaml.safe_load((ROOT / "configs" / "train_rigan.yaml").read_text())
    # the photo and video sources only: rendered rooms are their own set, and adding them to the
    # group draw would change every pair of the sets that earlier selections used
    clear = [dict(s, path=str(resolve(s["path"]))) if "path" in s else s for s in cfg["data"]["clear"]
             if not s.get("rooms")]
    short_side = (side, side) if side else tuple(cfg["data"]["short_side"])
    ds = SynthHazeDataset(clear_pool(clear), patch=side or 128, length=count, seed=SEED,
                          short_side=short_side, params=params)
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


def score_stage(onnx: str, pairs, scale: float, manifest: str = "weights/manifest.json") -> tuple[float, float]:
    """Mean PSNR / SSIM of the dehaze stage (ONNX Runtime host path) at ``internal_scale``."""
    stage = DehazeStage(DehazeStage.Config(when="always", backend="onnxruntime", weights=onnx,
                                           internal_scale=scale, manifest=manifest))
    stage.setup()
    scores = [score_pair(stage.dehaze(hazy), clear) for hazy, clear in pairs]
    stage.close()
    return float(np.mean([s["PSNR"] for s in scores])), float(np.mean([s["SSIM"] for s in scores]))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="*", help="generator state_dicts or last.pt files (crop mode)")
    ap.add_argument("--stage", metavar="ONNX", help="score this manifest-listed graph through the dehaze stage")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5], help="internal_scale values (--stage)")
    ap.add_argument("--manifest", default="weights/manifest.json",
                    help="manifest listing the --stage graph (a candidate's: `engines.weights.record`)")
    ap.add_argument("--side", type=int, default=360, help="frame side in pixels (--stage)")
    ap.add_argument("--count", type=int, help=f"pairs per set (default {CROPS} crops, 48 frames)")
    args = ap.parse_args(argv)
    if bool(args.weights) == bool(args.stage):  # the two modes draw different sets (crops vs whole frames)
        ap.error("give generator weights (crops), or --stage ONNX (whole frames), not both")
    torch.set_num_threads(2)
    side = args.side if args.stage else None
    count = args.count or (48 if side else CROPS)
    sets = {"no sky": heldout_pairs(count, side=side),
            "sky": heldout_pairs(count, params=HazeParams(sky_prob=1.0), side=side),
            "rooms": heldout_pairs(count, rooms=True, side=side)}
    what = f"{side}x{side} frames" if side else "crops"
    for name, pairs in sets.items():
        ident = np.mean([psnr(h, c) for h, c in pairs])
        print(f"held-out synthetic, {name} (seed {SEED}, {len(pairs)} {what}): hazy input PSNR {ident:.2f} dB")
    for w in args.weights:
        for name, pairs in sets.items():
            p, s = score(w, pairs)
            print(f"{w} [{name}]: PSNR {p:.2f} dB, SSIM {s:.4f}")
    for scale in args.scales if args.stage else ():
        means = []
        for name, pairs in sets.items():
            try:
                p, s = score_stage(args.stage, pairs, scale, args.manifest)
            except PipelineError as e:  # unlisted / altered graph, bad scale: one line, not a traceback
                print(f"heldout_rigan: error: {e}", file=sys.stderr)
                return 2
            means.append(p)
            print(f"{args.stage} stage internal_scale {scale} [{name}]: PSNR {p:.2f} dB, SSIM {s:.4f}")
        print(f"{args.stage} stage internal_scale {scale}: mean PSNR {np.mean(means):.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
