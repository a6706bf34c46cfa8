"""What reusing RI-GAN's transmission and airlight across frames costs in quality, and what it saves.

The dehaze stage runs RI-GAN every ``refresh_every`` frames of a stream, or sooner when the scene
changes by ``refresh_change`` (pipeline/stages/dehaze.py, HazeMemory); the frames between recover
J = (I - A)/t + A with the last t and A. This script scores that against RI-GAN on every frame
(``refresh_every: 1``), frame by frame, on synthetic videos whose clear frames are known exactly:

- a video is three cuts of 45, 37 and 58 frames (25 frames/s; lengths that are no multiple of
  a refresh period, so an age-based refresh does not fall on a cut by chance), each a different
  traffic scene (pipeline.sources.synthetic, its own scene seed, haze level and airlight), so a
  refresh rule must notice cuts; within a cut the haze drifts (beta x (1 + 0.3 sin(2 pi t / 3 s))),
  far faster than real fog, so a rule must also keep up with a haze that changes;
- the clear frame is the same generator with no haze (the traffic is identical: haze is only
  photometric); the hazy frame is the scattering model of pipeline.haze over the generator's
  per-frame depth (vehicles at the depth of their base);
- per frame: PSNR of the stage's output against the clear frame, for the reference and for each
  (refresh_every, refresh_change) candidate; the drop is reference minus candidate.

Choice (fixed before looking at the test seeds): on the validation videos, the candidate with the
fewest RI-GAN runs whose mean drop is at most 0.1 dB and whose per-frame drop is within 0.3 dB on
99 % of the frames; ties go to the larger refresh_every. The chosen candidate is then scored once
on the test videos. (A first rule, every frame within 0.3 dB, was met by no candidate of a first
grid, where cuts of 40 frames fell on the age-based refreshes: RI-GAN's own estimate on a frame
differs from its neighbours' by a few tenths of a dB, so a single frame can lose 0.5 dB to an
estimate four frames old. docs/models.md has both grids.)

    .venv/bin/python tools/realtime_dehaze.py [--size 640x360] [--json out/realtime_dehaze.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.frame import Frame  # noqa: E402
from pipeline.haze import apply_haze, transmission  # noqa: E402
from pipeline.sources.synthetic import BETA_MAX, SceneGenerator  # noqa: E402
from pipeline.stages.dehaze import DehazeStage  # noqa: E402

VALIDATION_SEEDS = (11, 12)
TEST_SEEDS = (21, 22, 23)
CUT_FRAMES = (45, 37, 58)
FPS = 25.0
DRIFT, DRIFT_PERIOD_S = 0.3, 3.0
EVERY = (4, 8, 16, 32)
CHANGE = (0.01, 0.02, 0.04, 1.0)  # 1.0: never refresh on a scene change, only by age
MAX_DROP_DB = 0.3   # on 99 % of the frames
MAX_MEAN_DROP_DB = 0.1


def video(seed: int, width: int, height: int):
    """(hazy, clear) uint8 BGR pairs of one video: three cuts, each its own scene, haze and airlight."""
    rng = np.random.default_rng(seed)
    for length in CUT_FRAMES:
        scene_seed = int(rng.integers(1 << 30))
        haze = float(rng.uniform(0.3, 0.8))
        airlight = float(rng.uniform(0.7, 0.95))
        hazy_gen = SceneGenerator(width, height, seed=scene_seed, haze=haze, airlight=airlight, density=0.08)
        clear_gen = SceneGenerator(width, height, seed=scene_seed, haze=0.0, airlight=airlight, density=0.08)
        phase = float(rng.uniform(0, 2 * math.pi))
        for i in range(length):
            _, truth_h = hazy_gen.next_frame()
            clear, truth_c = clear_gen.next_frame()
            assert np.array_equal(truth_h, truth_c), "haze changed the traffic"
            beta = haze * BETA_MAX * (1 + DRIFT * math.sin(2 * math.pi * i / (FPS * DRIFT_PERIOD_S) + phase))
            yield apply_haze(clear, transmission(hazy_gen.depth(), beta), airlight), clear


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def scores(pairs, every: int, change: float, threads: int | None) -> tuple[list[float], int, float]:
    """Per-frame PSNR of the stage with this refresh rule, RI-GAN runs counted, seconds spent."""
    config = DehazeStage.Config(when="always", score="dark_channel", refresh_every=every,
                                refresh_change=change, threads=threads)
    stage = DehazeStage(config)
    stage.setup()
    out, t0 = [], time.perf_counter()
    for k, (hazy, clear) in enumerate(pairs):
        frame = Frame("v", k + 1, k / FPS, hazy)
        stage.process([frame])
        out.append(psnr(frame.data["dehazed"], clear))
    seconds = time.perf_counter() - t0
    stage.close()
    return out, stage.network_runs, seconds


def evaluate(seeds, candidates, size, threads, log) -> dict:
    videos = {seed: list(video(seed, *size)) for seed in seeds}
    frames = sum(len(v) for v in videos.values())
    ref = {seed: scores(v, 1, 1.0, threads) for seed, v in videos.items()}
    ref_psnr = np.concatenate([ref[s][0] for s in seeds])
    ref_s = sum(ref[s][2] for s in seeds)
    # how much RI-GAN's own result moves between neighbouring frames of a cut: the yardstick for a drop
    jitter = np.concatenate([np.abs(np.diff(ref[s][0]))[_inside_cuts()] for s in seeds])
    log(f"  reference (RI-GAN every frame): mean PSNR {ref_psnr.mean():.2f} dB over {frames} frames, {ref_s:.1f} s; "
        f"|change| between neighbouring frames: mean {jitter.mean():.3f}, p99 {np.percentile(jitter, 99):.3f}, "
        f"max {jitter.max():.3f} dB")
    rows = []
    for every, change in candidates:
        got = {seed: scores(v, every, change, threads) for seed, v in videos.items()}
        cand = np.concatenate([got[s][0] for s in seeds])
        drop = ref_psnr - cand
        row = {"refresh_every": every, "refresh_change": change, "frames": frames,
               "rigan_runs": sum(got[s][1] for s in seeds), "mean_psnr": round(float(cand.mean()), 3),
               "reference_psnr": round(float(ref_psnr.mean()), 3), "mean_drop_db": round(float(drop.mean()), 3),
               "max_drop_db": round(float(drop.max()), 3), "p99_drop_db": round(float(np.percentile(drop, 99)), 3),
               "share_within_0.3_db": round(float(np.mean(drop <= 0.3)), 4),
               "seconds": round(sum(got[s][2] for s in seeds), 2), "reference_seconds": round(ref_s, 2)}
        rows.append(row)
        log(f"  every {every:>2} change {change:<4}: RI-GAN {row['rigan_runs']:>3}/{frames} frames, "
            f"mean {row['mean_psnr']:.2f} dB, drop mean {row['mean_drop_db']:+.3f} p99 {row['p99_drop_db']:+.3f} "
            f"max {row['max_drop_db']:+.3f}, "
            f"{row['seconds']:.1f} s vs {ref_s:.1f} s")
    return {"seeds": list(seeds), "rows": rows, "reference_psnr": round(float(ref_psnr.mean()), 3),
            "reference_jitter_db": {"mean": round(float(jitter.mean()), 3),
                                    "p99": round(float(np.percentile(jitter, 99)), 3),
                                    "max": round(float(jitter.max()), 3)}}


def _inside_cuts() -> np.ndarray:
    """Mask over np.diff of one video's per-frame scores: True where both frames are in the same cut."""
    ends = np.cumsum(CUT_FRAMES)[:-1] - 1  # index of the last frame of each cut but the last
    keep = np.ones(sum(CUT_FRAMES) - 1, bool)
    keep[ends] = False
    return keep


def choose(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["p99_drop_db"] <= MAX_DROP_DB and r["mean_drop_db"] <= MAX_MEAN_DROP_DB]
    return min(ok, key=lambda r: (r["rigan_runs"], -r["refresh_every"])) if ok else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x360")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    log = print
    log(f"validation seeds {VALIDATION_SEEDS} at {args.size}")
    val = evaluate(VALIDATION_SEEDS, [(e, c) for e in EVERY for c in CHANGE], size, args.threads, log)
    chosen = choose(val["rows"])
    if chosen is None:
        log(f"no candidate meets the rule (mean drop <= {MAX_MEAN_DROP_DB} dB, p99 <= {MAX_DROP_DB} dB)")
        if args.json:
            Path(args.json).write_text(json.dumps({"size": args.size, "validation": val, "chosen": None}, indent=2))
        return 1
    log(f"chosen on validation: refresh_every {chosen['refresh_every']}, refresh_change {chosen['refresh_change']}")
    log(f"test seeds {TEST_SEEDS}")
    test = evaluate(TEST_SEEDS, [(chosen["refresh_every"], chosen["refresh_change"])], size, args.threads, log)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"size": args.size, "validation": val, "chosen": chosen,
                                               "test": test}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
