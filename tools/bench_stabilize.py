"""What camera-motion compensation (pipeline.stabilize) costs per frame, against MOG2 in the same run.

Frames: the first N of a real clip (default ../shared/data/videos/video.avi, 640x360), resized to
``--resolution`` and shaken with training.data.jitter (seed 7), so the registration has real work.
Each round times, frame by frame and interleaved (the machine is shared and noisy):

- ``registration``: Stabilizer.update on the grey frame the stages register on (at most 320 px
  wide: the MSFgNet working frame at 640x360, the full grey frame at 320x240, grey conversion
  included when it is an extra one);
- ``msfgnet extra``: what ``stabilize: auto`` adds to the MSFgNet stage's window: registration
  + FrameBuffer.aligned (T frames of the shipped graph, stride 10) minus the plain window pick;
- ``mog2 extra``: what it adds to the MOG2 stage: grey copy + registration + warp into the
  model's frame + warp of the mask back + what ``apply`` costs more on the model's canvas
  (the frame plus a margin) than on the frame;
- ``mog2``: cv2 MOG2 ``apply`` on the same frame as seen, by a second model (the baseline of the
  ratio).

Times are medians of per-frame wall times over all rounds, in ms; ``ratio`` = time / mog2.

usage: python tools/bench_stabilize.py [--input CLIP] [--resolution 640x360] [--frames 200]
       [--rounds 3] [--json FILE]
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

from pipeline.framebuffer import FrameBuffer  # noqa: E402
from pipeline.stabilize import DEAD_BAND, EST_WIDTH, ModelFrame, Stabilizer  # noqa: E402
from pipeline.stages.msfgnet import grey_small, window_indices, working_size  # noqa: E402
from training.data.jitter import jitter_image, shake_trajectory  # noqa: E402

STRIDE = 10   # MSFgNet's window stride as the shipped stage runs it


def window_frames() -> int:
    """T of the shipped graph (weights/msfgnet.onnx's input is N x T x H x W)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(ROOT / "weights" / "msfgnet.onnx"), providers=["CPUExecutionProvider"])
    return int(session.get_inputs()[0].shape[1])


def read_frames(path: Path, size: tuple[int, int], count: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_AREA))
            if len(out) == count:
                break
    return out


def one_round(frames: list[np.ndarray], times: dict[str, list[float]], T: int) -> None:
    h, w = frames[0].shape[:2]
    size = working_size(w, h, 0.5)
    stab_msf, stab_mog = Stabilizer(), Stabilizer()
    plain, posed = FrameBuffer((T - 1) * STRIDE + 1), FrameBuffer((T - 1) * STRIDE + 1)
    where = ModelFrame()
    mog2 = cv2.createBackgroundSubtractorMOG2(500, 25, False)
    plain_mog2 = cv2.createBackgroundSubtractorMOG2(500, 25, False)
    clock = time.perf_counter
    reg_size = working_size(w, h, min(1.0, EST_WIDTH / w))  # the grey both stages register on
    for image in frames:
        small = grey_small(image, size)
        # MSFgNet without compensation: push + pick
        t0 = clock()
        plain.push("s", small)
        held = plain.window("s")
        held[window_indices(len(held), T, STRIDE)]
        t1 = clock()
        # MSFgNet with compensation (as MsfgnetStage._aligned)
        reg = small if small.shape[1] >= reg_size[0] else grey_small(image, reg_size)
        motion = stab_msf.update(reg)
        t2 = clock()
        k = small.shape[1] / reg.shape[1]
        posed.push("s", small, motion.pose_at(k), motion.epoch)
        posed.aligned("s", window_indices(posed.count("s"), T, STRIDE), DEAD_BAND * k)
        t3 = clock()
        # MOG2 with compensation, around its own apply
        grey = grey_small(image, reg_size)
        m = stab_mog.update(grey)
        warped, _ = where.to_model(image, m, w / grey.shape[1])
        t4 = clock()
        raw = mog2.apply(warped)
        t5 = clock()
        where.from_model(raw)
        t6 = clock()
        plain_mog2.apply(image)   # MOG2 without compensation: the baseline
        t7 = clock()
        times["registration"].append(t2 - t1)
        times["msfgnet extra"].append((t3 - t1) - (t1 - t0))
        # the model's canvas is larger than the frame (pipeline.stabilize.MARGIN): its apply costs more
        times["mog2 extra"].append((t4 - t3) + (t6 - t5) + (t5 - t4) - (t7 - t6))
        times["mog2"].append(t7 - t6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, default=ROOT.parent / "shared" / "data" / "videos" / "video.avi")
    p.add_argument("--resolution", default="640x360")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.resolution.lower().split("x"))
    frames = read_frames(args.input, size, args.frames)
    path = shake_trajectory(len(frames), seed=7)
    frames = [jitter_image(f, o) for f, o in zip(frames, path)]
    times: dict[str, list[float]] = {k: [] for k in ("registration", "msfgnet extra", "mog2 extra", "mog2")}
    T = window_frames()
    for _ in range(args.rounds):
        one_round(frames, times, T)
    base = float(np.median(times["mog2"]))
    result = {"resolution": args.resolution, "frames": len(frames), "rounds": args.rounds, "window": T,
              "cv2_threads": cv2.getNumThreads(), "input": str(args.input),
              "ms": {k: round(1e3 * float(np.median(v)), 3) for k, v in times.items()},
              "ms_p90": {k: round(1e3 * float(np.percentile(v, 90)), 3) for k, v in times.items()},
              "ratio_to_mog2": {k: round(float(np.median(v)) / base, 3) for k, v in times.items()}}
    print(f"{args.resolution}, {len(frames)} frames x {args.rounds} rounds (median ms per frame, ratio to MOG2)")
    for k in times:
        print(f"  {k:<14} {result['ms'][k]:8.3f} ms  p90 {result['ms_p90'][k]:8.3f}  x{result['ratio_to_mog2'][k]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
