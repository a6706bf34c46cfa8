"""Where the missed line crossings of tools/track_study.py come from (issue 14).

For each true crossing in one direction that no counted crossing was paired with (the pairing of
``track_study.pair_crossings``), the blob that covers the vehicle in the crossing frame (more
than 20 % of its box) is looked up among the blob stage's objects and the miss is put in one class:

* ``no blob``: nothing covers the vehicle (the mask lost it);
* ``joined``: the blob also covers more than 30 % of another vehicle's box (one track, one count);
* ``own blob``: the blob is the vehicle's alone; its track was counted at another frame or on a
  box the pairing did not accept, or not at all.

Joined misses are printed with the blob, the other vehicles (box and lane) and the vehicle's lane.

    python tools/count_misses.py --seeds 1 2 21 22 23 24 --cache out/cache [--direction out]

Same scenes, settings and cache keys as tools/track_study.py (default chain, greedy tracker).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import track_study as ts  # noqa: E402
from pipeline.sources.synthetic import SceneGenerator  # noqa: E402


def covered(a, b) -> float:
    """Pixels of box ``a`` inside box ``b`` (x, y, w, h)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))


def classify(seed: int, args) -> list[dict]:
    gen = SceneGenerator(args.width, args.height, seed=seed, haze=args.haze, nuisances=args.nuisances,
                         motion="ground", frames=args.frames)
    stream = f"seed{seed}"
    masks, truth, _ = ts.cached_detect(gen, args, stream)
    events = ts.true_crossing_events(truth, args.line * args.height, args.skip)
    config = {"lines": {"road": [[0.0, args.line], [1.0, args.line]]}, "calibration": gen.calibration(), "bin_s": 60.0}
    hyps, crossings, *_ = ts.track(masks, "greedy", config, stream, {"min_area": 100, "max_occluded": 25})
    counted = [c for c in crossings if c["frame"] > args.skip]
    out = []
    _, paired = ts.pair_crossings(counted, events, truth)
    for e in (e for j, e in enumerate(events) if j not in paired):
        if e["direction"] != args.direction:
            continue
        objs = {o["id"]: o for o in truth[e["frame"] - 1]}
        me = objs[e["id"]]
        area = me["box"][2] * me["box"][3]
        cover = [(covered(me["box"], b) / area, track, b) for track, b in hyps[e["frame"] - 1]]
        cover = [c for c in cover if c[0] > 0.2]
        miss = {"seed": seed, "frame": e["frame"], "id": e["id"], "lane": me["lane"],
                "box": [round(v) for v in me["box"]]}
        if not cover:
            miss["class"] = "no blob"
        else:
            _, track, blob = max(cover)
            others = [o for oid, o in objs.items()
                      if oid != e["id"] and covered(o["box"], blob) > 0.3 * o["box"][2] * o["box"][3]]
            miss["class"] = "joined" if others else "own blob"
            miss["blob"] = [round(v) for v in blob]
            miss["others"] = [{"box": [round(v) for v in o["box"]], "lane": o["lane"]} for o in others]
            miss["track_counted_at"] = [c["frame"] for c in crossings if c["track"] == track]
        out.append(miss)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--direction", choices=("in", "out"), default="out")
    p.add_argument("--cache", default=None, help="track_study's mask cache (made if missing)")
    p.add_argument("--detector", choices=("msfgnet", "mog2", "truth"), default="msfgnet")
    p.add_argument("--msfgnet", default="{}")
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--size", default="640x360")
    p.add_argument("--haze", type=float, default=0.4)
    p.add_argument("--nuisances", default="mild")
    p.add_argument("--line", type=float, default=0.8)
    p.add_argument("--skip", type=int, default=50)
    a = p.parse_args(argv)
    width, height = (int(v) for v in a.size.split("x"))
    args = SimpleNamespace(**vars(a), width=width, height=height)
    classes: dict[str, int] = {}
    for seed in a.seeds:
        for miss in classify(seed, args):
            classes[miss["class"]] = classes.get(miss["class"], 0) + 1
            print(json.dumps(miss))
    print(json.dumps({"direction": a.direction, "missed": sum(classes.values()), "classes": classes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
