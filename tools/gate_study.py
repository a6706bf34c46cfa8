"""How well does a haze score tell hazy pictures from clear ones? (the `when: auto` gate of the dehaze stage)

Compares the stage's dark-channel score (pipeline.stages.dcp.haze_score) with the mean haze
density 1 - t that the RI-GAN generator estimates on a small copy of the picture. Each score's
threshold is chosen on synthetic pictures (the held-out set of tools/heldout_rigan.py, seed 99,
whole 360x360 frames without composited sky: each hazy frame against its own clear frame), then
applied unchanged to

- hazy: the real hazy photographs of ../shared/data/dehazing/real-hazy-noGT (22),
- clear: every 30th of the first 300 frames of the three clear videos, every 200th CDnet highway
  frame and four skimage photographs (42 pictures).

The clear side shares its sources with the synthetic set, so "clear passed" is the friendlier
number; "hazy detected" is out of sample. Times are ONNX Runtime, one thread, median per picture,
including the resize.

usage: python tools/gate_study.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from heldout_rigan import heldout_pairs  # noqa: E402
from pipeline.commands.eval_dehaze import read_bgr8  # noqa: E402
from pipeline.stages.dcp import haze_score  # noqa: E402
from pipeline.stages.dehaze import DehazeStage  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def clear_pictures() -> list[np.ndarray]:
    import av
    import skimage.data as sd

    out = []
    for name in ("video.avi", "video02.avi", "bikes.mp4"):
        with av.open(str(SHARED / "videos" / name)) as c:
            out += [f.to_ndarray(format="bgr24") for i, f in zip(range(300), c.decode(video=0)) if i % 30 == 0]
    out += [cv2.imread(str(p)) for p in sorted((SHARED / "foreground" / "cdnet2014-highway" / "input").glob("*.jpg"))[::200]]
    out += [cv2.cvtColor(getattr(sd, n)(), cv2.COLOR_RGB2BGR) for n in ("astronaut", "chelsea", "coffee", "rocket")]
    return out


def hazy_pictures() -> list[np.ndarray]:
    folder = SHARED / "dehazing" / "real-hazy-noGT"
    return [read_bgr8(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".png", ".bmp")]


class NetworkScore:
    """The dehaze stage's ``score: density`` (mean 1 - t on a copy ``width`` pixels wide), timed per call."""

    def __init__(self, graph: str, width: int):
        self.stage = DehazeStage(DehazeStage.Config(score="density", weights=graph, score_width=width,
                                                    backend="onnxruntime", threads=1))
        self.times = []

    def __call__(self, image: np.ndarray) -> float:
        start = time.perf_counter()
        score = self.stage.density(image)
        self.times.append(time.perf_counter() - start)
        return score


def best_threshold(hazy: np.ndarray, clear: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy) that separates the two score lists best (hazy >= threshold)."""
    return max(((t, (np.mean(hazy >= t) + np.mean(clear < t)) / 2) for t in np.unique(np.concatenate([hazy, clear]))),
               key=lambda x: x[1])


def main() -> int:
    pairs = heldout_pairs(48, side=360)
    real_hazy, real_clear = hazy_pictures(), clear_pictures()
    scores = {"dark channel (stage default)": haze_score}
    for graph, width in (("weights/rigan.onnx", 80), ("weights/rigan.onnx", 160), ("weights/rigan_light.onnx", 80)):
        scores[f"1 - t, {Path(graph).stem} at {width} px wide"] = NetworkScore(graph, width)
    for name, score in scores.items():
        syn = np.array([score(h) for h, _ in pairs]), np.array([score(c) for _, c in pairs])
        threshold, acc = best_threshold(*syn)
        detected = np.mean([score(p) >= threshold for p in real_hazy])
        passed = np.mean([score(p) < threshold for p in real_clear])
        cost = f", {1000 * np.median(score.times):.1f} ms" if isinstance(score, NetworkScore) else ""
        print(f"{name}: threshold {threshold:.3f} (synthetic balanced accuracy {acc:.2f}); real hazy detected "
              f"{detected:.2f}, clear passed {passed:.2f}, balanced {(detected + passed) / 2:.2f}{cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
