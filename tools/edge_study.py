"""MSFgNet's mask re-decided by a full-resolution background: a study, not a stage setting.

MSFgNet works at half size; on the synthetic families most of its missed pixels lie within
2 px of a vehicle's outline (docs/models.md). This script asks whether a per-pixel test at
full size can fix the outline without a new model. For every scored frame of a family it
takes the stage's output (stage defaults: compensation ``auto``, ``refine: guided``) and a
background at full size: the per-pixel median of the 7 last keyframes (one in ten input
frames, the window's step), warped into the current frame with the stage's own camera
poses. With D the largest colour-channel difference to that background, it scores:

* ``shrink``   (level, keep): a mask pixel with D <= level leaves unless its probability is above keep;
* ``grow``     (level, floor, keep, guard, reach): shrink, plus a pixel within ``reach`` px of the mask
  with D > level and probability above ``floor`` joins, unless the guard calls it a shadow;
* ``shadow``   (guard, keep): a mask pixel the guard calls a shadow leaves unless its probability is
  above keep (a colour shadow test: Horprasert et al. 1999, Cucchiara et al. 2003);

guards: ``none``; ``darker`` (the mean of the channel ratios to the background below 0.97);
``(lo, hi, spread)``: mean ratio in (lo, hi) and every channel's ratio within ``spread`` of it.

KNN (stage defaults, compensation ``auto``) is scored on the same frames. Rule (set before the
sweep, as for the guided refinement): the highest mean F over the families among the variants
where no family loses more than 0.002 against the stage as it is.

    python tools/edge_study.py --split validation [--families clean,highway,...] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from eval_families import available, family_sequences  # noqa: E402
from pipeline.cdnet import Confusion  # noqa: E402
from pipeline.commands.eval_foreground import build_stage  # noqa: E402
from pipeline.frame import Frame  # noqa: E402
from pipeline.framebuffer import FrameBuffer  # noqa: E402
from training.data.families import FAMILIES  # noqa: E402

EVERY, KEYS = 10, 7
GUARDS = {"none": None, "darker": (0.0, 0.97, 9.0), "g(0.1,0.97,0.25)": (0.1, 0.97, 0.25),
          "g(0.3,0.9,0.05)": (0.3, 0.9, 0.05), "g(0.4,0.9,0.08)": (0.4, 0.9, 0.08),
          "g(0.5,0.95,0.1)": (0.5, 0.95, 0.1), "g(0.3,0.95,0.15)": (0.3, 0.95, 0.15)}
GROW_GUARDS = ("none", "darker", "g(0.1,0.97,0.25)")
VARIANTS = ([("base",)]
            + [("shrink", t, keep) for t in (15, 25) for keep in (0.6, 0.7, 0.8)]
            + [("grow", t, lo, keep, g, r) for t in (15, 25) for lo in (0.15, 0.3) for keep in (0.5, 0.7)
               for g in GROW_GUARDS for r in (1, 2, 3)]
            + [("shadow", g, keep) for g in GUARDS if g not in GROW_GUARDS for keep in (0.9, 1.01)])


def name(v: tuple) -> str:
    return " ".join(str(x) for x in v)


def study_family(family: str, split: str) -> dict[str, float]:
    conf = {name(v): Confusion() for v in VARIANTS}
    conf["knn"] = Confusion()
    stage, knn = build_stage("msfgnet"), build_stage("knn")
    with stage, knn:
        stage.setup()
        registrations, seen = stage._registrations, {}
        update = registrations.update

        def spy(stream, grey):  # the stage's own registration of each frame, for the full-size keyframes
            seen["motion"], seen["width"] = update(stream, grey), grey.shape[1]
            return seen["motion"]

        registrations.update = spy
        for k, frames in enumerate(family_sequences(family, split)):
            stream = f"{family}-{k}"
            stage.reset_stream(stream)
            knn.reset_stream(stream)
            keyframes = FrameBuffer(KEYS * EVERY + 1)
            for i, (image, labels, scored, roi) in enumerate(frames, start=1):
                out = stage.process([Frame(stream, i, None, image)])[0]
                other = knn.process([Frame(stream, i, None, image)])[0]
                motion = seen["motion"]
                keyframes.push(stream, image, motion.pose_at(image.shape[1] / seen["width"]), motion.epoch)
                held = keyframes.count(stream)
                if not scored or held < keyframes.T:
                    continue
                picks = np.array([held - 1 - d for d in range(1, keyframes.T) if (i - d) % EVERY == 0])
                past, _ = keyframes.aligned(stream, picks)
                back = np.median(past, axis=0).astype(np.float32)
                img = image.astype(np.float32)
                diff = np.abs(img - back).max(axis=2)
                ratio = (img + 1) / (back + 1)
                mean = ratio.mean(axis=2)
                spread = np.abs(ratio - mean[..., None]).max(axis=2)
                shadow = {g: np.zeros(diff.shape, bool) if v is None else (mean > v[0]) & (mean < v[1]) & (spread < v[2])
                          for g, v in GUARDS.items()}
                prob = np.asarray(out.data["fg_prob"])
                mask = prob > stage.config.threshold
                near = {r: cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
                        for r in (1, 2, 3)}
                conf["knn"].add(other.data["mask"], labels, roi)
                for v in VARIANTS:
                    if v[0] == "base":
                        m = mask
                    elif v[0] == "shrink":
                        m = mask & ~((diff <= v[1]) & (prob <= v[2]))
                    elif v[0] == "grow":
                        _, t, lo, keep, g, r = v
                        m = (mask & ~((diff <= t) & (prob <= keep))) | ((diff > t) & ~shadow[g] & near[r] & (prob > lo))
                    else:
                        m = mask & ~(shadow[v[1]] & (prob <= v[2]))
                    conf[name(v)].add(m.astype(np.uint8) * 255, labels, roi)
    return {key: round(c.metrics()["F-measure"], 4) for key, c in conf.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    families = available(args.families.split(","))
    scores = {}
    for family in families:
        scores[family] = study_family(family, args.split)
        print(f"{family}: stage {scores[family]['base']}, KNN {scores[family]['knn']}", flush=True)
    rows = []
    for v in VARIANTS:
        f = {fam: scores[fam][name(v)] for fam in families}
        worst = min(f[fam] - scores[fam]["base"] for fam in families)
        above_knn = sum(f[fam] > scores[fam]["knn"] for fam in families)
        rows.append((worst >= -0.002, sum(f.values()) / len(f), worst, above_knn, name(v)))
    rows.sort(reverse=True)
    print("allowed  mean F  worst change  families above KNN  variant")
    allowed = [r for r in rows if r[0]]
    everywhere = sorted((r for r in rows if r[3] == len(families)), key=lambda r: r[2], reverse=True)
    for ok, mean, worst, above, key in allowed[:10] + [r for r in everywhere[:3] if not r[0]]:
        print(f"{'yes' if ok else 'no ':7}  {mean:.4f}  {worst:+.4f}  {above:2d}/{len(families)}  {key}")
    if allowed:
        print(f"rule's pick: {allowed[0][4]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, "scores": scores}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
