"""One GPU check for a session that has a CUDA machine (run by tools/gpu_check.sh; < 8 minutes).

1. parity: MSFgNet and RI-GAN, PyTorch on CUDA (fp32; fp16 + channels_last; fp16 + CUDA graph)
   against the fp32 CPU model on real frames (CDnet highway, else the synthetic scene);
2. TensorRT (when it imports): engines for both models, cache hit, parity;
3. the CUDA-stream queue path end to end: upload -> RI-GAN (own stream) -> MSFgNet (own stream)
   -> download, DeviceFrameQueue + events between them, no host sync between stages; outputs
   compared with the same models run directly, and frames/s with 1/8/32 streams batched at 1080p;
4. writes everything to $OUT/gpu_check.json (the shell script adds the bench and pytest).

Weights: weights/<model>.pt when present and verified, else the factory's initial weights
(parity and speed do not depend on training; the JSON says which).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", ROOT / "out" / "gpu_check"))
SHARED = Path(os.environ.get("HAZEFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))  # a carried copy on the GPU machine
HIGHWAY = SHARED / "foreground" / "cdnet2014-highway" / "input"
DEADLINE = time.monotonic() + float(os.environ.get("GPU_CHECK_BUDGET_S", "300"))


def real_frames(count: int = 24) -> tuple[list[np.ndarray], str]:
    from engines.cli import read_frames

    if HIGHWAY.is_dir():
        return read_frames(HIGHWAY, count=count, stride=10), str(HIGHWAY)
    from pipeline.commands.bench import render_frames

    return render_frames(320, 240, count), "synthetic:traffic?size=320x240&haze=0.5"


def model_module(name: str):
    """(nn.Module on CPU, weights description)."""
    import torch

    from engines.load import MODELS
    from engines.torch.runner import TorchRunner
    from engines.weights import WEIGHTS_DIR

    pt = WEIGHTS_DIR / f"{name}.pt"
    runner = TorchRunner(MODELS[name].factory, weights=pt if pt.is_file() else None)
    torch.manual_seed(0)
    runner.activate()
    module = runner.module
    runner.deactivate()
    return module, (str(pt) if pt.is_file() else "factory initial weights (no weights file yet)")


def feeds_for(name: str, module, frames, size=(320, 240), batch=1):
    from engines.load import MODELS
    from engines.quantize import feeds_from_frames

    entry = MODELS[name]
    channels = module.spec.frames if name == "msfgnet" else 3
    shapes = {entry.input_names[0]: (None, channels, None, None)}
    return list(feeds_from_frames(frames, shapes, size=size, batch=batch, colour=entry.colour))


def torch_parity(results: dict, frames) -> dict:
    import torch

    from engines.load import MODELS
    from engines.parity import check_parity
    from engines.torch.runner import TorchRunner

    modules = {}
    for name in ("msfgnet", "rigan"):
        module, weights = model_module(name)
        modules[name] = module
        entry = MODELS[name]
        feeds = feeds_for(name, module, frames)[:8]
        kw = dict(input_names=entry.input_names, output_names=entry.output_names)
        rows = {}
        with TorchRunner(module, **kw) as cpu:
            for label, fp16, cl, graph in (("fp32", False, False, False), ("fp16+channels_last", True, True, False),
                                           ("fp16+cuda_graph", True, True, True)):
                gpu_module, _ = model_module(name)
                gpu = TorchRunner(gpu_module, device="cuda", fp16=fp16, channels_last=cl, cuda_graph=graph,
                                  stream=torch.cuda.Stream(), **kw)
                with gpu:
                    rep = check_parity(cpu, gpu, feeds, model=name, precision="fp16" if fp16 else "fp32", refuse=False)
                rows[label] = rep.to_dict() | {"summary": rep.summary()}
                print(f"[parity] {name} {label}: {rep.summary()}", flush=True)
        results.setdefault("parity", {})[name] = {"weights": weights, "runs": rows}
    return modules


def tensorrt_parity(results: dict, modules: dict, frames) -> None:
    from engines.cli import tensorrt_import_error

    why = tensorrt_import_error()
    if why:
        results["tensorrt"] = {"skipped": why}
        return
    from engines.export import onnx_from_torch
    from engines.load import MODELS
    from engines.parity import check_parity
    from engines.tensorrt.build import BuildSettings, EngineCache, Profile
    from engines.tensorrt.runner import TrtRunner
    from engines.torch.runner import TorchRunner
    import torch

    out = {}
    for name, module in modules.items():
        entry = MODELS[name]
        ch = module.spec.frames if name == "msfgnet" else 3
        onnx = onnx_from_torch(module, (torch.rand(1, ch, 240, 320),), OUT / "onnx" / f"{name}.onnx",
                               entry.input_names, entry.output_names,
                               {entry.input_names[0]: {0: "b", 2: "h", 3: "w"}, entry.output_names[0]: {0: "b", 2: "h", 3: "w"}})
        prof = (Profile.from_dict({entry.input_names[0]: [(1, ch, 240, 320), (1, ch, 240, 320), (32, ch, 1088, 1920)]}),)
        cache = EngineCache(OUT / "engines")
        for precision in ("fp32", "fp16"):
            if time.monotonic() > DEADLINE:
                out[f"{name}/{precision}"] = {"skipped": "time budget spent"}
                continue
            try:
                t0 = time.perf_counter()
                engine, reasons = cache.get(onnx, BuildSettings(precision=precision, profiles=prof))
                build_s = time.perf_counter() - t0
                hit = cache.get(onnx, BuildSettings(precision=precision, profiles=prof))[1] == []
                with TorchRunner(module, input_names=entry.input_names, output_names=entry.output_names) as ref, \
                        TrtRunner(engine) as trt_runner:
                    rep = check_parity(ref, trt_runner, feeds_for(name, module, frames)[:4], model=name,
                                       precision=precision, refuse=False)
                out[f"{name}/{precision}"] = {"build_s": round(build_s, 1), "cache_hit_second_time": hit,
                                              **rep.to_dict(), "summary": rep.summary()}
                print(f"[trt] {name} {precision}: {rep.summary()}", flush=True)
            except Exception as e:
                out[f"{name}/{precision}"] = {"error": f"{type(e).__name__}: {e}"[:500]}
                print(f"[trt] {name} {precision}: {type(e).__name__}: {e}", flush=True)
    results["tensorrt"] = out


def queue_pipeline(modules: dict, streams: int, frames_per_stream: int, size=(1920, 1080), check=None) -> dict:
    """upload -> RI-GAN -> MSFgNet -> download in three threads, one CUDA stream each, DeviceFrameQueue between.

    Frames of ``streams`` streams are batched per step (one frame of each stream per engine call).
    MSFgNet gets the T-frame window of grey dehazed frames kept on the GPU per stream.
    """
    import torch
    import torch.nn.functional as F

    from engines.torch.runner import TorchRunner
    from pipeline.gpu import DeviceFrameQueue, PinnedDownloader, PinnedUploader, QueueClosed, bgr_to_model_input

    w, h = size
    t_window = modules["msfgnet"].spec.frames
    s_up, s_rigan, s_fg = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
    rigan = TorchRunner(modules["rigan"], device="cuda", fp16=True, channels_last=True, stream=s_rigan,
                        input_names=("hazy",), output_names=("dehazed",)).activate()
    msfg = TorchRunner(modules["msfgnet"], device="cuda", fp16=True, channels_last=True, stream=s_fg,
                       input_names=("frames",), output_names=("fg_prob",)).activate()
    q1, q2 = DeviceFrameQueue(4), DeviceFrameQueue(4)
    base = check if check is not None else [np.random.default_rng(i).integers(0, 255, (h, w, 3), np.uint8)
                                            for i in range(4)]
    errors, outputs, latencies = [], [], []
    start_times = {}

    def upload():
        try:
            up = PinnedUploader(ring=max(4, streams + 1))
            for i in range(frames_per_stream):
                batch = [up.upload(base[(i + k) % len(base)], s_up) for k in range(streams)]
                with torch.cuda.stream(s_up):
                    x = bgr_to_model_input(torch.stack(batch))
                start_times[i] = time.perf_counter()
                q1.put(x, s_up)
            q1.close()
        except Exception as e:
            errors.append(e); q1.close()

    def dehaze():
        try:
            while True:
                try:
                    x = q1.get(s_rigan)
                except QueueClosed:
                    break
                y = rigan.infer_tensors({"hazy": x})["dehazed"]
                with torch.cuda.stream(s_rigan):
                    grey = (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3])
                    small = F.interpolate(grey.float(), scale_factor=0.5, mode="area")
                q2.put({"dehazed": y, "small": small}, s_rigan)
            q2.close()
        except Exception as e:
            errors.append(e); q2.close()

    threads = [threading.Thread(target=upload), threading.Thread(target=dehaze)]
    for t in threads:
        t.start()
    down, window, i = PinnedDownloader(), [], 0
    try:
        while True:
            try:
                item = q2.get(s_fg)
            except QueueClosed:
                break
            window = (window + [item["small"]])[-t_window:]
            with torch.cuda.stream(s_fg):
                stack = torch.cat([window[0]] * (t_window - len(window)) + window, dim=1)
            prob = msfg.infer_tensors({"frames": stack})["fg_prob"]
            with torch.cuda.stream(s_fg):
                mask = (prob > 0.5).to(torch.uint8).mul_(255)
                first = item["dehazed"][:1].float()  # on the consumer's stream, after its wait on the event
            outputs.append((down.download(first, s_fg), down.download(mask, s_fg)))
            latencies.append(time.perf_counter() - start_times[i])
            i += 1
    finally:
        for t in threads:
            t.join()
        rigan.deactivate(); msfg.deactivate()
    if errors:
        raise errors[0]
    total = time.perf_counter() - min(start_times.values())
    ms = np.asarray(latencies) * 1e3
    return {"streams": streams, "resolution": f"{w}x{h}", "frames": streams * frames_per_stream,
            "fps": round(streams * frames_per_stream / total, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "outputs": outputs}


def queue_checks(results: dict, modules: dict, frames) -> None:
    """Correctness at 320x240 (queue path vs direct fp16 calls), then throughput at 1080p."""
    import torch

    from engines.torch.runner import TorchRunner

    small = [f.copy() for f in frames[:4]]
    got = queue_pipeline(modules, 1, 4, size=(320, 240), check=small)
    with TorchRunner(modules["rigan"], device="cuda", fp16=True, channels_last=True,
                     input_names=("hazy",), output_names=("dehazed",)) as direct:
        from engines.quantize import frame_to_chw

        want = [direct.infer({"hazy": frame_to_chw(f)[None]})["dehazed"] for f in small]
    diffs = [float(np.abs(o[0] - w_).max()) for o, w_ in zip(got["outputs"], want)]
    results["queue_path"] = {"rigan_max_abs_vs_direct": max(diffs), "frames": len(diffs), "ok": max(diffs) < 1e-2}
    print(f"[queue] queue path vs direct rigan fp16: max abs {max(diffs):.3g}", flush=True)
    rows = []
    for k in (1, 8, 32):
        if time.monotonic() > DEADLINE:
            rows.append({"streams": k, "skipped": "time budget spent"})
            continue
        try:
            queue_pipeline(modules, k, 2)  # warm-up: cuDNN algorithm choice and allocator growth for this batch
            r = queue_pipeline(modules, k, 24 if k < 32 else 12)
            r.pop("outputs")
            rows.append(r)
            print(f"[queue] 1080p {k} stream(s): {r['fps']} frames/s, p50 {r['p50_ms']} ms", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            rows.append({"streams": k, "error": f"out of memory: {e}"[:300]})
        torch.cuda.empty_cache()
    results["queue_throughput"] = rows


#: dense fp16 tensor-core peak and HBM bandwidth from NVIDIA's data sheets (SXM parts)
CARDS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}


def model_throughput(results: dict, modules: dict) -> None:
    """Each model alone on the GPU (fp16, channels_last, eager and CUDA graph), batches of 8 and 32 frames
    at 1080p sizes, timed with CUDA events after warm-up; achieved FLOP/s against the card's peak, and the
    activation traffic that bounds such narrow convolutions from below."""
    import copy

    import torch

    from engines.load import MODELS
    from engines.torch.runner import TorchRunner
    from training.models.msfgnet import count_macs
    from training.models.rigan import conv_macs

    name = torch.cuda.get_device_name(0)
    peak, bandwidth = next((v for k, v in CARDS.items() if k in name), (None, None))
    t_window = modules["msfgnet"].spec.frames
    cases = [("rigan", (3, 540, 960), "960x540 = stage default internal_scale 0.5 of 1080p"),
             ("rigan", (3, 1080, 1920), "1920x1080 full size"),
             ("msfgnet", (t_window, 540, 960), "960x540 = stage default scale 0.5 of 1080p")]
    rows = []
    for model, shape, what in cases:
        module = copy.deepcopy(modules[model]).cpu().float().eval()
        if model == "rigan":
            macs = conv_macs(module, (1, *shape))
        else:
            macs = count_macs(module, shape[1], shape[2])
        act = activation_bytes(module, shape)
        for batch in (8, 32):
            for graph in (False, True):
                if time.monotonic() > DEADLINE:
                    rows.append({"model": model, "shape": what, "batch": batch, "skipped": "time budget spent"})
                    continue
                entry = MODELS[model]
                stream = torch.cuda.Stream()
                runner = TorchRunner(copy.deepcopy(module), device="cuda", fp16=True, channels_last=True,
                                     cuda_graph=graph, stream=stream, input_names=entry.input_names,
                                     output_names=entry.output_names)
                try:
                    with runner:
                        x = torch.rand(batch, *shape, device="cuda", dtype=torch.float16)
                        x = x.contiguous(memory_format=torch.channels_last)  # the runner's layout: no copy per call
                        feed = {entry.input_names[0]: x}
                        for _ in range(3):
                            runner.infer_tensors(feed)
                        stream.synchronize()
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        n, elapsed = 0, 0.0
                        start.record(stream)
                        while elapsed < 0.6 and n < 400:
                            for _ in range(5):
                                runner.infer_tensors(feed)
                            n += 5
                            end.record(stream)
                            end.synchronize()
                            elapsed = start.elapsed_time(end) / 1e3
                    fps = batch * n / elapsed
                    row = {"model": model, "shape": what, "batch": batch, "cuda_graph": graph, "fps": round(fps, 1),
                           "gflop_per_frame": round(2 * macs / 1e9, 3), "activation_mb_per_frame": round(act / 1e6, 1),
                           "tflops_achieved": round(2 * macs * fps / 1e12, 2)}
                    if peak:
                        row["pct_of_fp16_peak"] = round(100 * 2 * macs * fps / peak, 2)
                        row["fps_ceiling_compute"] = round(peak / (2 * macs), 0)
                        # every activation written once and read at least once: the bandwidth floor
                        row["fps_ceiling_memory"] = round(bandwidth / (2 * act), 0)
                        row["pct_of_memory_ceiling"] = round(100 * fps / row["fps_ceiling_memory"], 1)
                    rows.append(row)
                    print(f"[model] {model} {what} batch {batch} graph {graph}: {row}", flush=True)
                except torch.cuda.OutOfMemoryError as e:
                    rows.append({"model": model, "shape": what, "batch": batch, "error": f"out of memory: {e}"[:200]})
                torch.cuda.empty_cache()
    results["model_throughput"] = {"card": name, "peak_fp16_flops": peak, "hbm_bytes_per_s": bandwidth, "rows": rows}


def compiled_throughput(results: dict, modules: dict) -> None:
    """torch.compile (Inductor, default mode: pointwise ops fused into their neighbours) on the two networks
    at the stage's 1080p working size, fp16 channels_last batch 8: frames/s and max difference from eager.
    Skipped when less than 90 s of the budget is left (compilation takes tens of seconds)."""
    import copy

    import torch

    from engines.load import MODELS

    rows = []
    t_window = modules["msfgnet"].spec.frames
    for model, shape in (("rigan", (3, 540, 960)), ("msfgnet", (t_window, 540, 960))):
        if DEADLINE - time.monotonic() < 90:
            rows.append({"model": model, "skipped": "time budget spent"})
            continue
        try:
            eager = copy.deepcopy(modules[model]).cuda().half().eval().to(memory_format=torch.channels_last)
            x = torch.rand(8, *shape, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            compiled = torch.compile(eager)
            with torch.inference_mode():
                want = eager(x)
                got = compiled(x)
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                name = MODELS[model].output_names[0]
                pick = (lambda o: o[name] if isinstance(o, dict) else (o[0] if isinstance(o, (tuple, list)) else o))
                diff = float((pick(got).float() - pick(want).float()).abs().max())
                timings = {}
                for label, fn in (("eager", eager), ("compiled", compiled)):
                    for _ in range(3):
                        fn(x)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(40):
                        fn(x)
                    end.record()
                    end.synchronize()
                    timings[label] = round(8 * 40 / (start.elapsed_time(end) / 1e3), 1)
            rows.append({"model": model, "shape": f"8x{shape}", "compile_s": round(compile_s, 1),
                         "fps_eager": timings["eager"], "fps_compiled": timings["compiled"], "max_abs_vs_eager": diff})
            print(f"[compile] {rows[-1]}", flush=True)
        except Exception as e:  # Inductor missing a compiler, an unsupported op: recorded, the rest goes on
            rows.append({"model": model, "error": f"{type(e).__name__}: {e}"[:400]})
            print(f"[compile] {model}: {rows[-1]['error']}", flush=True)
        torch.cuda.empty_cache()
    results["compiled_throughput"] = rows


def activation_bytes(module, shape) -> int:
    """fp16 bytes of every leaf module's output for one frame (eager: each is written to and read from memory)."""
    import copy

    import torch

    total = 0

    def hook(mod, inp, out):
        nonlocal total
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if torch.is_tensor(t):
                total += t.numel() * 2

    module = copy.deepcopy(module).cpu().float().eval()
    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return total


def main() -> int:
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    frames, where = real_frames()
    results["frames"] = where
    for step in (lambda: results.update(_modules=torch_parity(results, frames)),
                 lambda: tensorrt_parity(results, results["_modules"], frames),
                 lambda: model_throughput(results, results["_modules"]),
                 lambda: queue_checks(results, results["_modules"], frames),
                 lambda: compiled_throughput(results, results["_modules"])):
        try:
            step()
        except Exception as e:
            import traceback

            traceback.print_exc()
            results.setdefault("errors", []).append(f"{type(e).__name__}: {e}"[:500])
    results.pop("_modules", None)
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"gpu_check: wrote {OUT / 'gpu_check.json'}")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
