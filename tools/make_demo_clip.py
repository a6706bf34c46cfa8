"""Regenerate ``assets/demo.mp4``: a hazy road-traffic clip for ``make demo``.

Takes the first 150 frames of ``../shared/data/videos/video.avi`` (640x360
road traffic, see assets/DEMO_SOURCE.txt) and adds synthetic haze with the
atmospheric scattering model (Koschmieder; He et al. 2009 eq. 1, the model
RI-GAN is trained on):

    I = J·t + A·(1 − t),   t = exp(−β·d)

The camera looks down a road, so scene depth grows towards the top of the
picture; we use the flat-ground depth of a pinhole camera whose horizon lies
just above the image, d(y) = 1 / (y/H + y0), which is about 6.7 at the top
row and 0.9 at the bottom for y0 = 0.15. With β = 0.18 the transmission goes
from ~0.3 (far) to ~0.85 (near). Encoded with PyAV as H.264 (mpeg4 without x264).

    .venv/bin/python tools/make_demo_clip.py [--src FILE] [--out assets/demo.mp4]
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.haze import apply_haze, transmission  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT.parent / "shared" / "data" / "videos" / "video.avi"
OUT = ROOT / "assets" / "demo.mp4"


def road_depth(h: int, w: int, y0: float = 0.15) -> np.ndarray:
    """Relative depth of a flat road seen from above: far at the top row, near at the bottom."""
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    return np.broadcast_to((1.0 / (y + y0))[:, None], (h, w))


def make_clip(src: Path, out: Path, frames: int = 150, beta: float = 0.18,
              airlight=(0.87, 0.855, 0.83), crf: int = 26) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    written = 0
    with av.open(str(src)) as inp, av.open(str(tmp), "w", format="mp4") as dst:
        vin = inp.streams.video[0]
        rate = vin.average_rate or Fraction(30)
        try:
            av.codec.Codec("libx264", "w")
            codec = "libx264"
        except Exception:
            codec = "mpeg4"
        vout = dst.add_stream(codec, rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        if codec == "libx264":
            vout.options = {"crf": str(crf), "preset": "medium"}
        t = None
        for frame in inp.decode(vin):
            image = frame.to_ndarray(format="bgr24")
            if t is None:
                t = transmission(road_depth(*image.shape[:2]), beta)
            hazy = av.VideoFrame.from_ndarray(apply_haze(image, t, airlight), format="bgr24")
            hazy.pts, hazy.time_base = written, 1 / rate
            for packet in vout.encode(hazy):
                dst.mux(packet)
            written += 1
            if written >= frames:
                break
        for packet in vout.encode():
            dst.mux(packet)
    tmp.replace(out)
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, default=SRC)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--beta", type=float, default=0.18)
    args = p.parse_args()
    if not args.src.exists():
        print(f"make_demo_clip: error: {args.src}: not found (needs ../shared/data)", file=sys.stderr)
        return 2
    n = make_clip(args.src, args.out, args.frames, args.beta)
    print(f"{args.out}: {n} frames, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
