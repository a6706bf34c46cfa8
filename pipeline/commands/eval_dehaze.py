"""``hazeflow eval dehaze``: PSNR, SSIM and CIEDE2000 of a dehazing method on paired folders.

Pairs are files with the same name in ``--hazy`` and ``--clear`` (SOTS style).
Images are compared as 8-bit BGR: grey images are repeated over three
channels, an alpha channel is dropped (not composited), 16-bit images are
scaled by 255/65535 and rounded. A pair whose sizes differ is an error, never
resized, since resampling would change the score. ``fps`` times the method
alone, not reading images or computing metrics.

SSIM: skimage's structural_similarity on the RGB image (data range 255,
uniform 7x7 window, mean over channels). CIEDE2000: mean over pixels of
the colour difference in CIELAB (D65). PSNR of an exact copy is reported as
100 dB so that means stay finite.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.commands.eval_foreground import build_stage, write_json
from pipeline.errors import ConfigError, PipelineError, SourceError, SourceNotFoundError, StageError
from pipeline.frame import Frame
from pipeline.imageio import to_bgr8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
PSNR_CAP = 100.0


def main(args) -> int:
    pairs = pair_files(Path(args.hazy), Path(args.clear))
    options = {"weights": getattr(args, "weights", None), "internal_scale": getattr(args, "internal_scale", None)}
    method = make_method(args.method, getattr(args, "backend", "auto"), **options)
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    per_pair, busy = [], 0.0
    try:
        for name, hazy_path, clear_path in pairs:
            hazy, clear = read_bgr8(hazy_path), read_bgr8(clear_path)
            if hazy.shape != clear.shape:
                raise SourceError(str(hazy_path), f"size {_size(hazy)} differs from {clear_path}'s {_size(clear)}")
            if min(hazy.shape[:2]) < SSIM_WINDOW:
                raise SourceError(str(hazy_path), f"image is {_size(hazy)}; SSIM needs at least "
                                                  f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels")
            t = time.perf_counter()
            try:
                out = method(hazy)
            except (StageError, SourceError) as e:  # name the file, not the stage's frame counter
                raise type(e)(str(hazy_path), e.cause) from None
            busy += time.perf_counter() - t
            if out.shape != hazy.shape or out.dtype != np.uint8:
                raise StageError(f"--method {args.method}", f"returned {out.dtype} {out.shape} for {hazy.shape} uint8")
            per_pair.append({"name": name, **score_pair(out, clear)})
            if save:
                write_png(save, Path(name).stem, out)
    finally:
        getattr(method, "close", lambda: None)()
    report = summarise(per_pair, busy, args.method)
    if args.method == "rigan":  # what ran, so two reports can be told apart
        report["weights"], report["internal_scale"] = method.stage.config.weights, method.stage.config.internal_scale
    to_stdout = args.json == "-"
    print_summary(report, file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        write_json(report, args.json)
    return 0


#: skimage's structural_similarity window (7x7): smaller images cannot be scored
SSIM_WINDOW = 7


def pair_files(hazy_dir: Path, clear_dir: Path) -> list[tuple[str, Path, Path]]:
    hazy, clear = _images(hazy_dir, "--hazy"), _images(clear_dir, "--clear")
    common = sorted(hazy.keys() & clear.keys())
    if not common:
        only_h = ", ".join(sorted(hazy)[:3])
        only_c = ", ".join(sorted(clear)[:3])
        raise SourceError(str(hazy_dir),
                          f"no file name also in {clear_dir} (hazy has {only_h}...; clear has {only_c}...)")
    unmatched = sorted(hazy.keys() ^ clear.keys())
    if unmatched:
        print(f"hazeflow: note: {len(unmatched)} file(s) without a partner skipped, e.g. {', '.join(unmatched[:3])}",
              file=sys.stderr)
    return [(n, hazy[n], clear[n]) for n in common]


def _images(folder: Path, option: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise SourceNotFoundError(str(folder), f"{option}: no such folder")
    files = {p.name: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    if not files:
        raise SourceError(str(folder), f"{option}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_bgr8(path: Path) -> np.ndarray:
    """Any image file -> HxWx3 uint8 BGR by the rules in the module docstring."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SourceError(str(path), "cannot read this image (truncated or not an image)")
    return to_bgr8(image, str(path))


def make_method(name: str, backend: str, weights: str | None = None, internal_scale: float | None = None):
    """A callable BGR uint8 -> BGR uint8 for ``--method``; ``weights`` / ``internal_scale`` are rigan's."""
    given = [f"--{k.replace('_', '-')}" for k, v in (("weights", weights), ("internal_scale", internal_scale))
             if v is not None]
    if given and name != "rigan":
        raise ConfigError(given[0], f"applies to --method rigan only, not {name}")
    if internal_scale is not None and not 0.05 <= internal_scale <= 1.0:
        raise ConfigError("--internal-scale", f"must be in [0.05, 1] (1 = full size), got {internal_scale}")
    if weights is not None and backend not in ("auto", "onnxruntime"):
        raise ConfigError("--weights", f"is an ONNX graph for ONNX Runtime; --backend {backend} loads the "
                                       "stage's torch_weights (set them in a run config)")
    if name == "none":
        return lambda image: image
    if name == "dcp":
        from pipeline.stages.dcp import DarkChannelDehazer, DcpStage

        # separate images, not a video: no airlight smoothing across them
        return DarkChannelDehazer(DcpStage.Config(airlight_momentum=0.0)).dehaze
    if name == "rigan":
        if weights is not None:
            backend = "onnxruntime"
        stage = build_stage("dehaze", backend=backend, when="always", weights=weights, internal_scale=internal_scale)
        return _StageMethod(stage, "rigan")
    raise ConfigError("--method", f"unknown method {name!r}; valid: rigan, dcp, none")


class _StageMethod:
    """Runs one image through a registry stage and returns its ``dehazed`` port."""

    def __init__(self, stage, label: str):
        self.stage, self.label, self.count = stage, label, 0
        stage.setup()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.count += 1
        frame = Frame(stream="eval", index=self.count, pts=None, image=image)
        try:
            self.stage.process([frame])
        except PipelineError:
            raise
        except Exception as e:
            raise StageError(f"stages.dehaze ({self.label})", f"{type(e).__name__}: {e}") from e
        out = frame.data.get("dehazed")
        if out is None:
            raise StageError(f"stages.dehaze ({self.label})", "wrote no 'dehazed' image")
        return np.asarray(out)

    def close(self) -> None:
        self.stage.close()


def score_pair(out_bgr: np.ndarray, clear_bgr: np.ndarray) -> dict[str, float]:
    from skimage.color import deltaE_ciede2000, rgb2lab
    from skimage.metrics import structural_similarity

    out = cv2.cvtColor(out_bgr, cv2.COLOR_BGR2RGB)
    clear = cv2.cvtColor(clear_bgr, cv2.COLOR_BGR2RGB)
    return {
        "PSNR": psnr(out, clear),
        "SSIM": float(structural_similarity(clear, out, channel_axis=2, data_range=255)),
        "CIEDE2000": float(np.mean(deltaE_ciede2000(rgb2lab(clear), rgb2lab(out)))),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0 ** 2 / mse))


def summarise(per_pair: list[dict], busy: float, method: str) -> dict:
    n = len(per_pair)
    report = {"method": method, "pairs": n}
    for key in ("PSNR", "SSIM", "CIEDE2000"):
        report[key] = sum(p[key] for p in per_pair) / n
    report["fps"] = n / busy if busy > 0 else math.nan
    report["per_pair"] = per_pair
    return report


def print_summary(report: dict, file=sys.stdout) -> None:
    print(f"method {report['method']}: {report['pairs']} pairs  PSNR {report['PSNR']:.2f} dB  "
          f"SSIM {report['SSIM']:.4f}  CIEDE2000 {report['CIEDE2000']:.2f}  {report['fps']:.1f} frames/s", file=file)


def write_png(folder: Path, stem: str, image: np.ndarray) -> None:
    """``folder/<stem>.png`` via a temporary name, so a crash never leaves a half file."""
    final = folder / f"{stem}.png"
    if final.resolve().parent != folder.resolve():
        raise SourceError(stem, "output name would leave the --save folder")
    tmp = folder / f".{stem}.tmp.png"
    if not cv2.imwrite(str(tmp), image):
        raise PipelineError(str(final), "cannot write image")
    os.replace(tmp, final)


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"
