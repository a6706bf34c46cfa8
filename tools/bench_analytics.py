"""Time the analytics stage per 640x360 frame with 10 tracks (issue 14: at most 2 ms).

Ten vehicles move through a 640x360 frame (two counting lines, two polygon zones, a ground
calibration, so every part runs: crossings, zone members, speeds). The blob stage, which
labels the mask those objects come from, is timed on the same frames in the same run as the
baseline, so the ratio holds on a busy machine where the milliseconds do not; so are OpenCV's
MOG2 ``apply`` on a 640x360 colour frame (the classical detector the blob stage would follow) and
``connectedComponentsWithStats`` with 32-bit labels (what the blob stage called before it used
16-bit ones), for the cost of the blob stage against both.

    python tools/bench_analytics.py [--frames 2000] [--tracks 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.frame import Frame  # noqa: E402
from pipeline.stages.analytics import AnalyticsStage  # noqa: E402
from pipeline.stages.blobs import BlobStage  # noqa: E402

W, H = 640, 360
CONFIG = {
    "lines": {"north": [[0.0, 0.55], [1.0, 0.55]], "south": [[0.0, 0.8], [1.0, 0.8]]},
    "zones": {"left": [[0.05, 0.5], [0.5, 0.5], [0.5, 0.95], [0.05, 0.95]],
              "right": [[0.5, 0.5], [0.95, 0.5], [0.95, 0.95], [0.5, 0.95]]},
    "calibration": {"image": [[250, 150], [390, 150], [600, 350], [40, 350]],
                    "ground": [[0, 40], [7, 40], [7, 4], [0, 4]]},
}


def scene(frames: int, tracks: int, seed: int = 0):
    """Per frame: the mask and the boxes of ``tracks`` vehicles moving up or down the frame."""
    rng = np.random.default_rng(seed)
    x = 10 + (W - 70) * np.arange(tracks) / max(tracks - 1, 1)  # one lane each: no merged blobs
    y0 = rng.uniform(0, H, tracks)
    v = rng.choice([-1, 1], tracks) * rng.uniform(2, 6, tracks)
    for k in range(frames):
        y = (y0 + v * k) % (H - 50)
        boxes = np.stack([x, y, np.full(tracks, 50.0), np.full(tracks, 40.0)], 1).astype(int)
        mask = np.zeros((H, W), np.uint8)
        for bx, by, bw, bh in boxes:
            mask[by:by + bh, bx:bx + bw] = 255
        yield mask


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--tracks", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    blobs = BlobStage(BlobStage.Config(min_area=50))
    plain = BlobStage(BlobStage.Config(min_area=50, max_occluded=0))  # without the occlusion rule, same frames
    mog2 = cv2.createBackgroundSubtractorMOG2()
    texture = np.random.default_rng(1).integers(60, 140, (H, W, 3), dtype=np.uint8)
    t_mog2, t_cc32 = [], []
    analytics = AnalyticsStage(AnalyticsStage.Config(**CONFIG))
    image = np.zeros((H, W, 3), np.uint8)
    t_blobs, t_analytics, t_plain, objects = [], [], [], []
    for i, mask in enumerate(scene(args.frames, args.tracks), start=1):
        frame = Frame("bench", i, (i - 1) / 25.0, image, data={"mask": mask})
        t = time.perf_counter()
        plain.process([Frame("bench", i, (i - 1) / 25.0, image, data={"mask": mask})])
        t0 = time.perf_counter()
        t_plain.append(t0 - t)
        blobs.process([frame])
        t1 = time.perf_counter()
        analytics.process([frame])
        t2 = time.perf_counter()
        t_blobs.append(t1 - t0)
        t_analytics.append(t2 - t1)
        objects.append(len(frame.data["objects"]))
        colour = cv2.add(texture, cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR) // 2)
        t3 = time.perf_counter()
        mog2.apply(colour)
        t4 = time.perf_counter()
        cv2.connectedComponentsWithStats(mask, connectivity=8)
        t_mog2.append(t4 - t3)
        t_cc32.append(time.perf_counter() - t4)
    warm = slice(min(50, args.frames // 10), None)
    a, b = np.array(t_analytics[warm]) * 1e3, np.array(t_blobs[warm]) * 1e3
    result = {
        "resolution": f"{W}x{H}", "frames": args.frames, "tracks": args.tracks,
        "mean_objects_per_frame": round(float(np.mean(objects)), 2),
        "analytics_ms": {"p50": round(float(np.median(a)), 4), "p99": round(float(np.percentile(a, 99)), 4),
                         "mean": round(float(a.mean()), 4)},
        "blobs_ms": {"p50": round(float(np.median(b)), 4), "mean": round(float(b.mean()), 4)},
        "analytics_over_blobs_p50": round(float(np.median(a) / np.median(b)), 3),
        "blobs_without_occlusion_ms": {"p50": round(float(np.median(np.array(t_plain[warm]) * 1e3)), 4)},
        "blobs_and_analytics_ms_p50": round(float(np.median(a + b)), 4),
        "target_ms": 2.0,
        "mog2_apply_ms_p50": round(float(np.median(np.array(t_mog2[warm]) * 1e3)), 4),
        "components_32bit_ms_p50": round(float(np.median(np.array(t_cc32[warm]) * 1e3)), 4),
        "blobs_and_analytics_over_mog2_p50": round(float(np.median(a + b) / np.median(np.array(t_mog2[warm]) * 1e3)),
                                                   3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
