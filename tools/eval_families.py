"""Per nuisance family: MSFgNet against MOG2 and KNN, F-measure by the CDnet rules.

The families and the seed/frame roles are the protocol of docs/models.md
("Protocol for unseen cameras"): ``--split validation`` uses synthetic seeds
201, 202 and highway frames 1200-1449; ``--split test`` seeds 301, 302 and
highway 1450-1700. Validation chooses; test is only reported.

    python tools/eval_families.py --split validation [--weights weights/msfgnet.onnx | DIR]
        [--methods msfgnet,mog2,knn] [--families clean,hard,...] [--refine learned|guided|off] [--json FILE]

Every method sees every frame of a sequence in order (synthetic: from frame
1; highway: from 300 frames before the split's first, the background models'
warm-up); only the split's frames are scored. The
highway families need ``../shared/data/foreground/cdnet2014-highway`` and are
left out with a message where it is absent; ``highway-jitter`` needs
``training.data.jitter`` (real highway frames and their labels moved by the same
random walk + oscillation, up to 15 px and 1 degree).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.cdnet import Confusion  # noqa: E402
from pipeline.commands.eval_foreground import build_stage  # noqa: E402
from pipeline.frame import Frame  # noqa: E402
from training.data.families import (FAMILIES, HIGHWAY_FRAMES, HIGHWAY_WARMUP, JITTER_SEED, SEEDS,  # noqa: E402
                                    SYNTHETIC, highway_frames, synthetic_frames)

HIGHWAY = ROOT.parent / "shared" / "data" / "foreground" / "cdnet2014-highway"


def highway_sequence(split: str, jitter: bool):
    """(image, labels, scored, roi) of highway frames from HIGHWAY_WARMUP before the split's first to its last,
    optionally shaken (the split's own trajectory)."""
    first, last = HIGHWAY_FRAMES[split]
    return highway_frames(HIGHWAY, first, last, 1, JITTER_SEED[split] if jitter else None, warmup=HIGHWAY_WARMUP)


def family_sequences(family: str, split: str):
    """Each sequence of the family as an iterator of (image, labels, scored, roi)."""
    if family == "highway":
        return [highway_sequence(split, jitter=False)]
    if family == "highway-jitter":
        return [highway_sequence(split, jitter=True)]
    return [((im, lab, sc, None) for im, lab, sc in synthetic_frames(family, s)) for s in SEEDS[split]]


def with_band(labels: np.ndarray, band: int) -> np.ndarray:
    """``labels`` with a CDnet-like unknown band (170, not scored) around every vehicle: the pixels
    within ``band`` px of its outline on either side (dilation minus erosion by a (2 band + 1)
    square). CDnet's own ground truth has such a band (about 3.7 px of it per outline pixel on
    highway); the synthetic families' labels have none. A diagnostic, not the protocol's score."""
    if band <= 0:
        return labels
    out = labels.copy()
    out[outline(labels, band)] = 170
    return out


def outline(labels: np.ndarray, band: int) -> np.ndarray:
    """The pixels within ``band`` px of a vehicle's outline (label 255), on either side: dilation
    minus erosion by a (2 band + 1) square."""
    fg = (labels == 255).astype(np.uint8)
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    return (cv2.dilate(fg, kernel) - cv2.erode(fg, kernel)) > 0


def miss_locations(mask: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Missed foreground pixels (label 255, mask off) by where they lie: within 10 px of the
    picture's border, else within 2 px of a vehicle's outline, else inside a vehicle."""
    missed = (labels == 255) & (mask <= 127)
    border = np.zeros(missed.shape, bool)
    border[:10], border[-10:], border[:, :10], border[:, -10:] = True, True, True, True
    ring = outline(labels, 2)
    return {"border": int((missed & border).sum()), "outline": int((missed & ~border & ring).sum()),
            "inside": int((missed & ~border & ~ring).sum())}


def label_counts(mask: np.ndarray, labels: np.ndarray, roi) -> dict[str, int]:
    """Pixels of CDnet's labels inside the ROI, and how many of them the mask marks: vehicles (255),
    shadows (50, background by the rules) and plain background (0)."""
    inside = np.ones(labels.shape, bool) if roi is None else roi > 0
    marked = mask > 127
    out = {}
    for name, value in (("vehicle", 255), ("shadow", 50), ("background", 0)):
        where = inside & (labels == value)
        out[name] = int(where.sum())
        out[name + "_marked"] = int((where & marked).sum())
    return out


def score_family(method: str, family: str, split: str, weights: str | None,
                 stabilize: str | None = None, thresholds: list[float] | None = None,
                 band: int = 0, refine: str | None = None) -> dict[str, float]:
    """Confusion summed over the family's sequences -> CDnet metrics, plus frames/s of the method.
    With ``thresholds`` (msfgnet) the probability of the same pass is also scored at each of them,
    under ``by_threshold``. ``band`` > 0 scores against labels with a CDnet-like unknown band
    (``with_band``; a diagnostic)."""
    options = {"weights": weights} if method == "msfgnet" and weights else {}
    if method == "msfgnet" and refine:
        options["refine"] = refine
    if stabilize is not None:
        options["stabilize"] = stabilize
    confusion, busy, count = Confusion(), 0.0, 0
    swept = {t: Confusion() for t in (thresholds or [])}
    misses = {"border": 0, "outline": 0, "inside": 0}
    by_label: dict[str, int] = {}
    stage = build_stage(method, **options)
    compensation = getattr(stage.config, "stabilize", "absent (no camera-motion compensation in this checkout)")
    if stabilize is not None and compensation != stabilize:
        raise SystemExit(f"eval_families: --stabilize {stabilize}: stage {method} has no such setting")
    with stage:
        for k, frames in enumerate(family_sequences(family, split)):
            name = f"{family}-{k}"
            stage.reset_stream(name)
            for i, (image, labels, scored, roi) in enumerate(frames, start=1):
                t = time.perf_counter()
                frame = stage.process([Frame(name, i, None, image)])[0]
                busy += time.perf_counter() - t
                count += 1
                if scored:
                    labels = with_band(labels, band)
                    confusion.add(frame.data["mask"], labels, roi)
                    for key, n in miss_locations(frame.data["mask"], labels).items():
                        misses[key] += n
                    for key, n in label_counts(frame.data["mask"], labels, roi).items():
                        by_label[key] = by_label.get(key, 0) + n
                    for t, c in swept.items():
                        c.add(np.where(np.asarray(frame.data["fg_prob"]) > t, 255, 0).astype(np.uint8), labels, roi)
            stage.reset_stream(name)
    metrics = confusion.metrics()
    metrics["missed_pixels"] = misses
    # share of each CDnet label's pixels the mask marks (shadow: label 50, only in CDnet's own labels)
    metrics["marked_share"] = {k: round(by_label[k + "_marked"] / by_label[k], 5)
                               for k in ("vehicle", "shadow", "background") if by_label.get(k)}
    if swept:
        metrics["by_threshold"] = {f"{t:g}": c.metrics() for t, c in swept.items()}
    metrics["fps"] = count / busy if busy else math.nan
    metrics["stabilize"] = compensation
    return metrics


def available(families: list[str]) -> list[str]:
    out = []
    for f in families:
        if f.startswith("highway") and not HIGHWAY.is_dir():
            print(f"skipping {f}: {HIGHWAY} is absent", file=sys.stderr)
            continue
        if f == "highway-jitter":
            try:
                import training.data.jitter  # noqa: F401
            except ImportError:
                print("skipping highway-jitter: training.data.jitter is not in this checkout", file=sys.stderr)
                continue
        out.append(f)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=tuple(SEEDS), required=True)
    p.add_argument("--methods", default="msfgnet,mog2,knn")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--weights", default=None, help="msfgnet: manifest-listed ONNX graph or a `hazeflow adapt` folder")
    p.add_argument("--stabilize", choices=("auto", "off"), default=None,
                   help="camera-motion compensation of every stage (default: the stages' own default)")
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="msfgnet: also score its probability at each of these thresholds (one pass)")
    p.add_argument("--refine", choices=("learned", "guided", "off"), default=None,
                   help="msfgnet: the mask's edge (default: the stage's, learned)")
    p.add_argument("--label-band", type=int, default=0, metavar="PX",
                   help="diagnostic: leave PX pixels either side of each vehicle's outline unscored, as "
                        "CDnet's own labels do (default 0: the protocol's score)")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        p.error(f"unknown family {unknown[0]}; valid: {', '.join(FAMILIES)}")
    families = available(families)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for family in families:
        results[family] = {}
        for method in methods:
            results[family][method] = score_family(method, family, args.split, args.weights, args.stabilize,
                                                   args.thresholds if method == "msfgnet" else None,
                                                   args.label_band, args.refine)
            m = results[family][method]
            print(f"{args.split} {family:15s} {method:8s} F {m['F-measure']:.4f} "
                  f"(P {m['Precision']:.3f} R {m['Recall']:.3f}) {m['fps']:.0f} frames/s; missed pixels "
                  + ", ".join(f"{k} {v}" for k, v in m["missed_pixels"].items()) + "; marked "
                  + ", ".join(f"{k} {v:.4f}" for k, v in m["marked_share"].items()), file=sys.stderr, flush=True)
            for t, mt in m.get("by_threshold", {}).items():
                print(f"{args.split} {family:15s} {method:8s} threshold {t}: F {mt['F-measure']:.4f} "
                      f"(P {mt['Precision']:.3f} R {mt['Recall']:.3f})", file=sys.stderr, flush=True)
    report = {"split": args.split, "label_band": args.label_band, "refine": args.refine or "stage default",
              "weights": args.weights or "weights/msfgnet.onnx (stage default)",
              "seeds": SEEDS[args.split], "highway_frames": HIGHWAY_FRAMES[args.split], "families": results,
              "mean_F_synthetic": {m: _mean([results[f][m]["F-measure"] for f in results if f in SYNTHETIC])
                                   for m in methods}}
    print(markdown(report, methods))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float) + "\n")
    return 0


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def markdown(report: dict, methods: list[str]) -> str:
    lines = ["| family | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for family, row in report["families"].items():
        lines.append(f"| {family} | " + " | ".join(f"{row[m]['F-measure']:.3f}" for m in methods) + " |")
    lines.append("| mean (synthetic) | " + " | ".join(f"{report['mean_F_synthetic'][m]:.3f}" for m in methods) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
