"""Dehaze the real hazy photographs (no ground truth) with RI-GAN candidates and DCP, side by side.

For looking at what numbers cannot show (the sky defect of docs/models.md). Each row is one photo:
hazy | DCP | one column per generator, all through the dehaze stage's own host path
(internal_scale 0.5, transmission and airlight applied at full size). Also prints, per photo and
generator, the airlight A and the mean change of the sky: the bright, smooth pixels of the top
third (the output minus the hazy input, grey levels; strongly negative = the dark blotch).

usage: python tools/real_sheet.py OUT.png WEIGHTS.pt [WEIGHTS.pt ...] [--folder DIR] [--height 160]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.commands.eval_dehaze import read_bgr8  # noqa: E402
from pipeline.stages.dcp import DarkChannelDehazer, DcpStage  # noqa: E402
from pipeline.stages.dehaze import DehazeStage  # noqa: E402
from training.models.rigan import RIGeneratorPorts  # noqa: E402
from training.train_rigan import load_generator  # noqa: E402

FOLDER = ROOT.parent / "shared" / "data" / "dehazing" / "real-hazy-noGT"


class _GeneratorRunner:
    """The ONNX runner's infer() contract over an in-process torch generator."""

    def __init__(self, weights: str):
        gen = load_generator(weights)
        self.gen = RIGeneratorPorts(gen.width, gen.blocks)
        self.gen.load_state_dict(gen.state_dict())
        self.gen.eval()
        self.last_airlight = None

    def infer(self, feeds):
        with torch.no_grad():
            outs = self.gen(torch.from_numpy(feeds["hazy"]))
        named = {k: v.numpy() for k, v in zip(RIGeneratorPorts.output_names, outs)}
        self.last_airlight = named["airlight"].reshape(3)
        return named

    def deactivate(self):
        pass


def sky_mask(image: np.ndarray) -> np.ndarray:
    """Bright, smooth pixels in the top third of the picture (where a sky would be)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    grad = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8))
    mask = (grey >= np.percentile(grey, 80)) & (grad < 0.03)
    mask[grey.shape[0] // 3:] = False
    return mask


def sky_change(hazy: np.ndarray, out: np.ndarray) -> float:
    m = sky_mask(hazy)
    if m.sum() < 0.01 * m.size:
        return float("nan")
    g = lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).astype(np.float32)  # noqa: E731
    return float((g(out)[m] - g(hazy)[m]).mean())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--folder", default=str(FOLDER))
    ap.add_argument("--height", type=int, default=160)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))
    dcp = DarkChannelDehazer(DcpStage.Config(airlight_momentum=0.0))
    stages = []
    for w in args.weights:
        stage = DehazeStage(DehazeStage.Config(when="always"))
        stage._runner = _GeneratorRunner(w)
        stages.append(stage)
    rows, changes = [], np.zeros((len(files), len(stages)))
    for i, f in enumerate(files):
        hazy = read_bgr8(f)
        tiles = [hazy, dcp.dehaze(hazy)]
        airs = []
        for j, stage in enumerate(stages):
            out = stage.dehaze(hazy)
            tiles.append(out)
            changes[i, j] = sky_change(hazy, out)
            airs.append(float(stage._runner.last_airlight.mean()))
        h = args.height
        tiles = [cv2.resize(t, (max(1, round(t.shape[1] * h / t.shape[0])), h), interpolation=cv2.INTER_AREA)
                 for t in tiles]
        rows.append(np.hstack(tiles))
        print(f"{f.name:20s} A " + " ".join(f"{a:.2f}" for a in airs)
              + "  sky change " + " ".join(f"{c:+6.1f}" for c in changes[i]))
    width = max(r.shape[1] for r in rows)
    sheet = np.vstack([cv2.copyMakeBorder(r, 0, 2, 0, width - r.shape[1], cv2.BORDER_CONSTANT) for r in rows])
    cv2.imwrite(args.out, sheet)
    valid = ~np.isnan(changes)
    for j, w in enumerate(args.weights):
        col = changes[valid[:, j], j]
        print(f"{w}: sky change mean {col.mean():+.1f}, worst {col.min():+.1f} grey levels over {len(col)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
