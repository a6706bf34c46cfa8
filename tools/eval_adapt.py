"""Labelled check of ``hazeflow adapt`` (docs/models.md, protocol rule 3).

For each family and seed of the split, a 400-frame sequence is written as an
image folder; ``hazeflow adapt`` runs on its frames 1-300 (it never sees a
label) and the base and the kept model are then scored with the CDnet rules on
frames 301-400, every frame fed in order from frame 1 through the stage.

    python tools/eval_adapt.py --split validation [--families jitter,foliage,hard] [--budget-s 120] [--candidate] [--json FILE]

``--candidate`` adapts each sequence a second time with the self-check overruled and scores that model
too, so a refused adaptation shows whether the refusal was right.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.cdnet import Confusion  # noqa: E402
from pipeline.frame import Frame  # noqa: E402
from pipeline.stages.msfgnet import MsfgnetStage  # noqa: E402
from training.data.families import SEEDS, SYNTHETIC, synthetic_frames  # noqa: E402

FRAMES, ADAPT_ON, FPS = 400, 300, 25


def write_folder(family: str, seed: int, root: Path) -> list:
    """Frames 1..ADAPT_ON as a CDnet-layout input/ folder; returns every (image, truth) of the sequence."""
    sequence = [(image, truth) for image, truth, _ in synthetic_frames(family, seed, FRAMES)]
    (root / "input").mkdir(parents=True)
    for i, (image, _) in enumerate(sequence[:ADAPT_ON], start=1):
        cv2.imwrite(str(root / "input" / f"in{i:06d}.png"), image)
    return sequence


def score(weights: str, sequence: list) -> float:
    conf = Confusion()
    with MsfgnetStage(MsfgnetStage.Config(weights=weights)) as stage:
        for i, (image, truth) in enumerate(sequence, start=1):
            mask = stage.process([Frame("seq", i, None, image)])[0].data["mask"]
            if i > ADAPT_ON:
                conf.add(mask, truth)
    return conf.metrics()["F-measure"]


def main(argv: list[str] | None = None) -> int:
    from training import adapt

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=tuple(SEEDS), required=True)
    p.add_argument("--families", default="jitter,foliage,hard")
    p.add_argument("--budget-s", type=float, default=120.0)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--candidate", action="store_true",
                   help="also adapt once more with the self-check overruled and score that model (what the check refused)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = {}
    for family in args.families.split(","):
        if family not in SYNTHETIC:
            p.error(f"unknown family {family}; valid: {', '.join(SYNTHETIC)}")
        for seed in SEEDS[args.split]:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                sequence = write_folder(family, seed, tmp / "camera")
                ns = SimpleNamespace(input=str(tmp / "camera"), minutes=ADAPT_ON / FPS / 60, out=str(tmp / "model"),
                                     base=None, iterations=args.iterations, budget_s=args.budget_s, threads=2,
                                     resume=False, no_progress=True)
                adapt.main(ns)
                report = json.loads((tmp / "model" / "adapt.json").read_text())
                row = {"base_F": score(MsfgnetStage.Config().weights, sequence),
                       "kept_F": score(str(tmp / "model"), sequence), "kept": report["kept"], "why": report["why"],
                       "check_base": report["check_base"], "check_adapted": report["check_adapted"],
                       "iterations": report["fine_tuning"]["iterations"], "seconds": report["seconds"]}
                if args.candidate:  # the same fine-tuning (seeded per iteration), written whatever the check says
                    from unittest import mock

                    with mock.patch.object(adapt, "adapted_is_better", lambda base, adapted, s: (True, "overruled")):
                        adapt.main(SimpleNamespace(**{**vars(ns), "out": str(tmp / "candidate")}))
                    row["candidate_F"] = score(str(tmp / "candidate"), sequence)
                results[f"{family}#{seed}"] = row
                print(f"{args.split} {family}#{seed}: base F {row['base_F']:.4f} kept ({row['kept']}) F "
                      f"{row['kept_F']:.4f}; {row['why']}"
                      + (f"; adapted model F {row['candidate_F']:.4f}" if "candidate_F" in row else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"split": args.split, "results": results}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
