"""``hazeflow bench``: per-stage and end-to-end frames/s and latency, with the classical baseline.

For each resolution and number of streams K:

1. a clip of N frames is rendered once (synthetic traffic scene with haze, or a
   generated pattern when the synthetic source is absent) and H.264-encoded in
   memory; each of the K streams decodes its own copy;
2. ``decode``, every registered stage that can be built, and ``encode`` are timed
   on their own, frames taken round-robin from the K streams and handed to a
   stage in batches of up to its ``max_batch`` (frames of different streams in
   one call, as the graph does). Stages that cannot be built (no weights yet,
   module missing) are skipped and the reason is recorded;
3. ``end_to_end`` runs decode -> the learned chain (dehaze, msfgnet, blobs; the
   classical stage stands in for a learned one that is missing, and the chain
   actually run is recorded) -> encode, one group of K frames at a time;
4. ``baseline`` runs decode -> MOG2 -> DCP -> encode in the same way, in the
   same run, so the two are comparable on the same machine.

Latency p50/p99 is per call: the time a frame spends in that stage (batch
included). The loop is sequential on purpose: it measures the work, not the
overlap a threaded graph adds on a machine with spare cores.

With ``--device cuda`` a stage that has a device path (``wants_cuda_stream``:
dehaze and msfgnet on the torch backend) gets its own CUDA stream as in the
graph, so its frames stay on the GPU: its time includes the upload of a numpy
input and the GPU work (the bench waits for the device after each call), and
its outputs feed the next stage as device tensors. They are downloaded once
(pipeline.gpu.data_to_host) before a host stage or the encoder reads them;
that download is counted in ``end_to_end``, not in a stage's own time.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.sinks.video import pick_codec

DEFAULT_RESOLUTIONS = ("640x360",)
STANDARD_RESOLUTIONS = ("320x240", "640x360", "1280x720", "1920x1080")
STAGE_ORDER = ("dcp", "dehaze", "mog2", "knn", "msfgnet", "blobs")
LEARNED_CHAIN = (("dehaze", "dcp"), ("msfgnet", "mog2"), ("blobs", None))
BASELINE_CHAIN = ("mog2", "dcp")


# --- statistics --------------------------------------------------------------------
def summarise(times_s: Sequence[float], frames: int) -> dict:
    """fps over the total time; p50/p99 of the per-call times, in ms."""
    total = float(sum(times_s))
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "fps": round(frames / total, 2) if total > 0 else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
        "frames": frames,
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(text, "resolution must be WxH, e.g. 640x360") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise ConfigError(text, "resolution must be at least 16x16 with even sides (H.264 4:2:0)")
    return w, h


# --- media ---------------------------------------------------------------------------
def render_frames(width: int, height: int, count: int, haze: float = 0.5, seed: int = 1) -> list[np.ndarray]:
    """BGR frames of a hazy traffic scene (synthetic source), or moving boxes over haze if it is absent."""
    try:
        from pipeline.sources import open_source

        uri = f"synthetic:traffic?size={width}x{height}&frames={count}&haze={haze}&seed={seed}"
        with open_source(uri) as source:
            return [f.image for f in source]
    except (ImportError, ModuleNotFoundError):
        pass
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        img = base.copy()
        x = (i * 7) % max(1, width - width // 6)
        img[height // 3: height // 3 + height // 6, x: x + width // 6] = (30, 30, 220)
        frames.append((img * (1 - haze) + 230 * haze).astype(np.uint8))
    return frames


def encode_clip(frames: Sequence[np.ndarray], fps: int = 25) -> bytes:
    """H.264 (or MPEG-4) MP4 in memory."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        enc = VideoEncoder(out, frames[0].shape[1], frames[0].shape[0], fps)
        for img in frames:
            enc.encode(img)
        enc.flush()
    return buf.getvalue()


class VideoEncoder:
    """One output video stream; ``encode(bgr)`` muxes whatever packets the encoder returns."""

    def __init__(self, container, width: int, height: int, fps: int = 25):
        import av

        self._av = av
        self.container = container
        self.stream = container.add_stream(pick_codec(), rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        if self.stream.codec_context.name == "libx264":
            self.stream.options = {"preset": "ultrafast", "tune": "zerolatency"}

    def encode(self, image: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(image, format="bgr24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def flush(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)


class StreamIO:
    """Decoder and encoder of one benchmark stream (both in memory); a context manager."""

    def __init__(self, clip: bytes, width: int, height: int):
        import av

        self.input = av.open(io.BytesIO(clip), "r")
        self.frames = self.input.decode(video=0)
        self.output = av.open(io.BytesIO(), "w", format="mp4")
        self.encoder = VideoEncoder(self.output, width, height)

    def decode(self) -> np.ndarray | None:
        frame = next(self.frames, None)
        return None if frame is None else frame.to_ndarray(format="bgr24")

    def close(self) -> None:
        try:
            self.encoder.flush()
        finally:
            self.output.close()
            self.input.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --- stages ---------------------------------------------------------------------------
def build_stage(name: str, args):
    """Instantiate and set up a registered stage with the bench's backend/device; (stage, None) or (None, reason)."""
    from pipeline.stages import REGISTRY, stage_class

    if name not in REGISTRY:
        return None, "not registered"
    try:
        cls = stage_class(name)
    except Exception as e:
        return None, f"cannot import {REGISTRY[name]}: {type(e).__name__}: {e}"
    try:
        config = cls.Config()
        wanted = {"backend": args.backend, "device": args.device, "precision": args.precision}
        fields = {f.name for f in dataclasses.fields(config)}
        changes = {k: v for k, v in wanted.items() if k in fields and not (k == "backend" and v == "auto")}
        if "when" in fields:  # dehaze gate: time the model on every frame (the gate only lowers the cost)
            changes["when"] = "always"
        if "threads" in fields and args.threads:
            changes["threads"] = args.threads
        stage = cls(dataclasses.replace(config, **changes))
        if args.device == "cuda" and getattr(stage, "wants_cuda_stream", False):
            import torch

            stage.use_cuda_stream(torch.cuda.Stream())  # the device path, as the graph runs it
        stage.setup()
        return stage, None
    except Exception as e:
        cause = getattr(e, "cause", None)
        where = getattr(e, "input", None)
        return None, f"{where}: {cause}" if cause else f"{type(e).__name__}: {e}"


def fill_ports(frame: Frame, stage, produced: dict) -> None:
    """Give a stage timed on its own the inputs an earlier stage would have written."""
    for port in stage.inputs:
        if port == "image" or port in frame.data:
            continue
        earlier = produced.get((frame.stream, frame.index, port))
        if earlier is not None:
            frame.data[port] = earlier
        elif port == "dehazed":
            frame.data[port] = frame.image
        elif port == "mask":
            frame.data[port] = np.zeros(frame.image.shape[:2], np.uint8)
        elif port == "fg_prob":
            frame.data[port] = np.zeros(frame.image.shape[:2], np.float32)


def groups(streams: list[list[np.ndarray]]):
    """Frame index i of every stream together: what a muxer hands the graph at once."""
    for i in range(min(len(s) for s in streams)):
        yield [Frame(f"s{k}", i + 1, i / 25.0, s[i]) for k, s in enumerate(streams)]


def batches(frames: list[Frame], size: int):
    size = max(1, int(size or 1))
    for i in range(0, len(frames), size):
        yield frames[i:i + size]


class HostCopies:
    """Device tensors a GPU stage left in frames -> numpy, before a host stage or the encoder reads them.

    The bench has no per-frame CUDA events (the graph does), so it waits for the whole device first.
    Frames without tensors cost nothing and import nothing (the CPU bench).
    """

    def __init__(self):
        self._downloader = None

    def __call__(self, frames) -> None:
        from pipeline.gpu import PinnedDownloader, data_to_host, is_tensor

        if not any(is_tensor(v) for f in frames for v in f.data.values()):
            return
        import torch

        torch.cuda.synchronize()
        self._downloader = self._downloader or PinnedDownloader()
        for f in frames:
            data_to_host(f.data, self._downloader)


def wait_for_device(stage) -> None:
    """A stage on the device path returns before its GPU work is done: time the work, not the launch."""
    if getattr(stage, "on_device", False):
        import torch

        torch.cuda.synchronize()


def time_stage(stage, streams: list[list[np.ndarray]], produced: dict) -> dict:
    times, count = [], 0
    to_host = HostCopies()
    on_device = getattr(stage, "on_device", False)
    for group in groups(streams):
        for batch in batches(group, stage.max_batch):
            for f in batch:
                fill_ports(f, stage, produced)
            if not on_device:
                to_host(batch)  # an earlier stage's device outputs: not this stage's time
            t0 = time.perf_counter()
            stage.process(batch)
            wait_for_device(stage)
            times.append(time.perf_counter() - t0)
            count += len(batch)
            for f in batch:
                for port in stage.outputs:
                    if port in f.data:
                        produced[(f.stream, f.index, port)] = f.data[port]
    return summarise(times, count)


def run_chain(clip: bytes, width: int, height: int, k: int, frames: int, chain: list) -> dict:
    """decode -> chain -> encode, one group of K frames (one per stream) per step."""
    streams = [StreamIO(clip, width, height) for _ in range(k)]
    times, count = [], 0
    to_host = HostCopies()
    try:
        for i in range(frames):
            t0 = time.perf_counter()
            group = []
            for s_idx, s in enumerate(streams):
                img = s.decode()
                if img is not None:
                    group.append(Frame(f"s{s_idx}", i + 1, i / 25.0, img))
            if not group:
                break
            for stage in chain:
                if not getattr(stage, "on_device", False):
                    to_host(group)
                for batch in batches(group, stage.max_batch):
                    stage.process(batch)
            to_host(group)  # download once before encoding
            for f in group:
                out = f.data.get("dehazed")
                streams[int(f.stream[1:])].encoder.encode(out if out is not None else f.image)
            times.append(time.perf_counter() - t0)
            count += len(group)
    finally:
        for s in streams:
            s.close()
    return summarise(times, count)


# --- one configuration -----------------------------------------------------------------
def bench_one(width: int, height: int, k: int, args, clip: bytes, log: Callable[[str], None]) -> dict:
    run = {"resolution": f"{width}x{height}", "streams": k, "backend": args.backend, "precision": args.precision,
           "device": args.device, "frames_per_stream": args.frames, "stages": {}, "skipped": {}}

    decoded, times = [], []
    for _ in range(k):
        with StreamIO(clip, width, height) as s:
            frames = []
            while True:
                t0 = time.perf_counter()
                img = s.decode()
                if img is None:
                    break
                times.append(time.perf_counter() - t0)
                frames.append(img)
            decoded.append(frames)
    run["stages"]["decode"] = summarise(times, sum(len(f) for f in decoded))

    if args.device == "cuda":
        run["stages"].update(time_transfers(decoded))

    produced: dict = {}
    built = {}
    for name in _stage_names():
        stage, reason = build_stage(name, args)
        if stage is None:
            run["skipped"][name] = reason
            log(f"  {name}: skipped ({reason})")
            continue
        try:
            run["stages"][name] = time_stage(stage, decoded, produced)
            built[name] = True
        except Exception as e:
            run["skipped"][name] = f"failed while running: {type(e).__name__}: {e}"
        finally:
            stage.close()

    enc_times = []
    for s_idx, frames in enumerate(decoded):
        import av

        with av.open(io.BytesIO(), "w", format="mp4") as out:
            enc = VideoEncoder(out, width, height)
            for img in frames:
                t0 = time.perf_counter()
                enc.encode(img)
                enc_times.append(time.perf_counter() - t0)
            enc.flush()
    run["stages"]["encode"] = summarise(enc_times, sum(len(f) for f in decoded))

    chain_names = [learned if built.get(learned) else fallback for learned, fallback in LEARNED_CHAIN]
    chain_names = [n for n in chain_names if n and built.get(n)]
    run["end_to_end"] = timed_chain(chain_names, clip, width, height, k, args)
    base = timed_chain(list(BASELINE_CHAIN), clip, width, height, k, args)
    run["baseline"] = {"name": "decode+mog2+dcp+encode", **base}
    return run


def timed_chain(names: list[str], clip: bytes, width: int, height: int, k: int, args) -> dict:
    chain = []
    try:
        for name in names:
            stage, reason = build_stage(name, args)
            if stage is None:
                return {"stages": names, "fps": None, "skipped": f"{name}: {reason}"}
            chain.append(stage)
        result = run_chain(clip, width, height, k, args.frames, chain)
    except Exception as e:  # a stage that builds but fails on frames: recorded, the other runs go on
        return {"stages": names, "fps": None, "error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        for stage in chain:
            stage.close()
    return {"stages": ["decode", *names, "encode"], **result}


def time_transfers(decoded: list[list[np.ndarray]]) -> dict:
    """Pinned upload (+ BGR->float) and download of every frame, timed with CUDA events' host wait."""
    import torch

    from pipeline.gpu import PinnedDownloader, PinnedUploader, bgr_to_model_input

    stream = torch.cuda.Stream()
    up, down = PinnedUploader(), PinnedDownloader()
    up_t, down_t = [], []
    for frames in decoded:
        for img in frames:
            t0 = time.perf_counter()
            dev = up.upload(img, stream)
            with torch.cuda.stream(stream):
                x = bgr_to_model_input(dev)
            stream.synchronize()
            up_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            down.download(dev, stream)
            down_t.append(time.perf_counter() - t0)
            del x
    n = sum(len(f) for f in decoded)
    return {"upload": summarise(up_t, n), "download": summarise(down_t, n)}


def _stage_names() -> list[str]:
    from pipeline.stages import REGISTRY

    return [n for n in STAGE_ORDER if n in REGISTRY] + [n for n in REGISTRY if n not in STAGE_ORDER]


# --- machine and reports ---------------------------------------------------------------
def machine_info(device: str) -> dict:
    import cv2
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
        "codec": pick_codec(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        import torch

        info.update(torch=torch.__version__, gpu=torch.cuda.get_device_name(0),
                    cuda=torch.version.cuda, compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    return info


def markdown(result: dict) -> str:
    m = result["machine"]
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    lines = [f"\n### {when}: {m['cpu']} ({m['cores']} cores){gpu}, load average {m.get('load_avg_1m', 'n/a')}\n"]
    for run in result["runs"]:
        lines.append(f"\n**{run['resolution']}, {run['streams']} stream(s)**, backend {run['backend']}, "
                     f"precision {run['precision']}, device {run['device']}, {run['frames_per_stream']} frames/stream\n")
        lines.append("| stage | frames/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
        for name, s in run["stages"].items():
            lines.append(f"| {name} | {_num(s['fps'])} | {_num(s['p50_ms'])} | {_num(s['p99_ms'])} |")
        e, b = run["end_to_end"], run["baseline"]
        lines.append(f"| **end to end** ({' + '.join(e.get('stages', []))}) | {_num(e.get('fps'))} | "
                     f"{_num(e.get('p50_ms'))} | {_num(e.get('p99_ms'))} |")
        lines.append(f"| **baseline** ({b['name']}) | {_num(b.get('fps'))} | {_num(b.get('p50_ms'))} | {_num(b.get('p99_ms'))} |")
        notes = [f"- skipped `{name}`: {why}" for name, why in run["skipped"].items()]
        notes += [f"- {label} failed: {r['error']}" for label, r in (("end to end", e), ("baseline", b)) if r.get("error")]
        if notes:
            lines.append("")
            lines.extend(notes)
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:g}"


def main(args) -> int:
    resolutions = [parse_size(r) for r in (args.resolution or DEFAULT_RESOLUTIONS)]
    streams = args.streams or [1]
    if any(k < 1 for k in streams) or args.frames < 2:
        raise ConfigError("bench", "--streams must be >= 1 and --frames >= 2")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda", "no CUDA device (torch.cuda.is_available() is False)")
    args.threads = getattr(args, "threads", None) or 0
    quiet = args.json == "-"
    log = (lambda msg: print(msg, file=sys.stderr)) if quiet else print
    runs = []
    for w, h in resolutions:
        clip = encode_clip(render_frames(w, h, args.frames))
        for k in streams:
            log(f"bench {w}x{h}, {k} stream(s), {args.frames} frames each")
            runs.append(bench_one(w, h, k, args, clip, log))
            e, b = runs[-1]["end_to_end"], runs[-1]["baseline"]
            log(f"  end to end {_num(e.get('fps'))} frames/s ({' + '.join(e.get('stages', []))}); "
                f"baseline {_num(b.get('fps'))} frames/s")
    result = {"machine": machine_info(args.device), "runs": runs}
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown(result))
    return 0
