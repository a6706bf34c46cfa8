"""Line counts of a config's blobs + analytics stages on one video, per frame range (issue 14).

The foreground stages of the config (everything before ``blobs``) run once and their masks are
kept in a cache file; the blob and analytics stages then run on those masks with the config's
own settings, optionally with blob settings overridden, so several variants are compared on
identical masks. Crossings are summed per direction for each ``--ranges`` frame range (1-based,
inclusive), e.g. the frames a setting was chosen on and the frames kept for the test.

Usage: ``python tools/video_counts.py configs/traffic.yaml --ranges 1-374 375-748 1-748
--cache out/video02_masks.npz --blobs '{"max_occluded": 0}'``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.frame import Frame  # noqa: E402
from pipeline.stages import stage_class  # noqa: E402


def _stages(entries):
    stages = []
    for entry in entries:
        (name, values), = entry.items()
        cls = stage_class(name)
        stages.append(cls(cls.Config(**(values or {}))))
    return stages


def masks_of(uri: str, entries, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Masks and pts of every frame, from the cache when it exists."""
    if cache is not None and cache.exists():
        data = np.load(cache)
        return data["masks"], data["pts"]
    stages = _stages(entries)
    for s in stages:
        s.setup()
    masks, pts = [], []
    try:
        with av.open(uri) as container:
            stream = container.streams.video[0]
            for i, vf in enumerate(container.decode(stream), start=1):
                t = float(vf.pts * stream.time_base) if vf.pts is not None else (i - 1) / 25.0
                frame = Frame("v", i, t, vf.to_ndarray(format="bgr24"))
                for s in stages:
                    s.process([frame])
                masks.append(np.asarray(frame.data["mask"]).copy())
                pts.append(t)
    finally:
        for s in stages:
            s.close()
    masks, pts = np.stack(masks), np.asarray(pts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, masks=masks, pts=pts)
    return masks, pts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--ranges", nargs="+", default=["1-748"])
    p.add_argument("--cache", type=Path, default=None, help="npz of the foreground masks (made if missing)")
    p.add_argument("--blobs", default="{}", help="JSON of blob settings that override the config's")
    args = p.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    names = [next(iter(e)) for e in config["stages"]]
    cut = names.index("blobs")
    uri = str((Path(args.config).resolve().parent.parent / config["inputs"][0]["uri"]).resolve()) \
        if not Path(config["inputs"][0]["uri"]).is_absolute() else config["inputs"][0]["uri"]
    masks, pts = masks_of(uri, config["stages"][:cut], args.cache)
    blob_values = dict(config["stages"][cut]["blobs"] or {}, **json.loads(args.blobs))
    blobs, analytics = _stages([{"blobs": blob_values}, config["stages"][cut + 1]])
    h, w = masks.shape[1:3]
    image = np.zeros((h, w, 3), np.uint8)
    crossings = []
    for i, (mask, t) in enumerate(zip(masks, pts), start=1):
        frame = Frame("v", i, float(t), image, data={"mask": mask})
        analytics.process(blobs.process([frame]))
        crossings += [(i, c["direction"]) for c in frame.data["crossings"]]
    out = {}
    for r in args.ranges:
        lo, hi = (int(v) for v in r.split("-"))
        out[r] = {d: sum(1 for i, dd in crossings if lo <= i <= hi and dd == d) for d in ("in", "out")}
    print(json.dumps({"blobs": blob_values, "counts": out, "crossing_frames": crossings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
