"""Per-frame camera-motion record of one family sequence, as a background stage sees it.

Feeds one sequence of ``training.data.families`` (a synthetic family and seed)
to a stage with ``stabilize: auto`` and prints the stage's ``stabilize`` record
every ``--every`` frames, then how often each registration status occurred and
on which frames the MOG2/KNN model was restarted. docs/models.md uses it to show
the registration drifting on a synthetic scene whose camera does not move.

    python tools/stabilize_trace.py --family clean --seed 301 [--method knn] [--every 20]
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.commands.eval_foreground import build_stage  # noqa: E402
from pipeline.frame import Frame  # noqa: E402
from training.data.families import SYNTHETIC, synthetic_frames  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=tuple(SYNTHETIC), required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--method", choices=("mog2", "knn"), default="knn")
    p.add_argument("--every", type=int, default=20)
    args = p.parse_args(argv)
    statuses, restarts = collections.Counter(), []
    stage = build_stage(args.method, stabilize="auto")
    name = f"{args.family}-{args.seed}"
    with stage:
        stage.reset_stream(name)
        for i, (image, _labels, _scored) in enumerate(synthetic_frames(args.family, args.seed), start=1):
            record = stage.process([Frame(name, i, None, image)])[0].data.get("stabilize", {})
            statuses[record.get("status")] += 1
            if record.get("model_restarted"):
                restarts.append(i)
            if i % args.every == 0:
                print(i, record, flush=True)
    print("statuses:", dict(statuses))
    print("model restarted at frames:", restarts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
