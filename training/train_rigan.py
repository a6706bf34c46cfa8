"""``hazeflow train rigan`` and ``hazeflow export rigan``.

Training alternates one discriminator and one generator update per batch
(pix2pix schedule, as RI-GAN does). The first ``adv_start`` iterations use the
pixel losses only, so the discriminator meets a generator that already dehazes
(cheaper on the CPU and steadier than fighting a random generator).

Output folder (``--out``, default from the config):
``last.pt`` (everything needed for ``--resume``), ``rigan.pt`` (generator
state_dict), ``history.json``, ``curves.png``, ``samples.png`` (hazy | dehazed |
clear rows of validation and synthetic images), ``train.log``.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.errors import ConfigError, PipelineError, WeightsError
from training.common import load_checkpoint, load_yaml, pick_device, save_checkpoint, save_curves
from training.data.dehaze import HazeParams, PairedFolderDataset, SynthHazeDataset, clear_pool
from training.losses.dehaze import LossWeights, d_loss, generator_loss
from training.models.rigan import RIDiscriminator, RIGenerator, RIGeneratorPorts, dehaze_any_size, generator_shape

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "train_rigan.yaml"
DEFAULT_WEIGHTS = ROOT / "weights" / "rigan.pt"

DEFAULTS = {
    "seed": 1,
    "out": "runs/rigan",
    "model": {"width": 16, "blocks": 4, "d_width": 16},
    "data": {"patch": 128, "short_side": [160, 320], "samples_per_epoch": 2000, "clear": [{"skimage": True}],
             "haze": {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                      for f in fields(HazeParams)}},
    "train": {"epochs": 8, "batch": 8, "lr_g": 3e-4, "lr_d": 2e-4, "betas": [0.5, 0.999], "lr_floor": 0.1,
              "adv_start": 300, "threads": 1, "checkpoint_every": 50, "max_iterations": None,
              "max_seconds": None, "workers": 0},
    "loss": {f.name: f.default for f in fields(LossWeights)},
    "val": {"hazy": None, "clear": None, "limit": 25, "sheet": 4},
}


class NonFiniteLoss(PipelineError, FloatingPointError):
    """A loss became NaN or infinite; training stops before the weights are damaged further."""


# --------------------------------------------------------------------------- config
def merge(defaults: dict, given: dict, where: str = "") -> dict:
    """Defaults overridden by ``given``; unknown keys are an error listing the valid ones."""
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            valid = ", ".join(sorted(defaults))
            raise ConfigError(f"{where}{key}", f"unknown key; valid keys: {valid}")
        if isinstance(defaults[key], dict) and isinstance(value, dict):
            out[key] = merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def resolve(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


def load_config(path: str | Path | None) -> dict:
    cfg = merge(DEFAULTS, load_yaml(path or DEFAULT_CONFIG))
    for src in cfg["data"]["clear"]:
        if "path" in src:
            src["path"] = str(resolve(src["path"]))
    return cfg


# --------------------------------------------------------------------------- helpers
def haze_params(given: dict | None) -> HazeParams:
    """``data.haze`` of the config (already merged over the defaults) as HazeParams."""
    if not given:
        return HazeParams()
    try:
        params = HazeParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        for f in fields(params):
            value = getattr(params, f.name)
            if isinstance(f.default, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"{f.name} must be [low, high], got {list(value)}")
            if f.name.endswith("_prob") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")
    except (TypeError, ValueError) as e:
        raise ConfigError("data.haze", str(e)) from None
    return params


def as_uint8(t: torch.Tensor) -> np.ndarray:
    """3 x H x W tensor in [0, 1] -> H x W x 3 uint8 (BGR stays BGR)."""
    return (t.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def check_finite(value: torch.Tensor, what: str, iteration: int) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteLoss(
            f"train rigan iteration {iteration}",
            f"{what} loss is {float(value.detach())}; lower train.lr_g/lr_d or resume from the last checkpoint (last.pt)",
        )


def lr_factor(iteration: int, total: int, floor: float) -> float:
    """Cosine decay from 1 to ``floor`` as ``iteration`` goes from 0 to ``total``."""
    return _cosine(iteration / max(total, 1), floor)


def _cosine(progress: float, floor: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(gen: RIGenerator, val: PairedFolderDataset | None, device: torch.device, keep: int = 0):
    """Mean PSNR/SSIM over the validation pairs (skimage metrics on uint8), plus ``keep`` sheet rows."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if val is None or len(val) == 0:
        return {}, []
    gen.eval()
    psnr, ssim, rows = [], [], []
    for i in range(len(val)):
        hazy, clear = val[i]
        out = dehaze_any_size(gen, hazy.unsqueeze(0).to(device))[0]
        o, c = as_uint8(out), as_uint8(clear)
        psnr.append(peak_signal_noise_ratio(c, o, data_range=255))
        ssim.append(structural_similarity(c, o, channel_axis=2, data_range=255))
        if i < keep:
            rows.append(np.hstack([as_uint8(hazy), o, c]))
    gen.train()
    return {"val_psnr": float(np.mean(psnr)), "val_ssim": float(np.mean(ssim))}, rows


def save_sheet(path: Path, rows: list[np.ndarray], width: int = 960) -> None:
    """Stack (hazy | dehazed | clear) rows, each scaled to ``width`` pixels, into one PNG."""
    if not rows:
        return
    scaled = [cv2.resize(r, (width, max(1, round(r.shape[0] * width / r.shape[1]))), interpolation=cv2.INTER_AREA)
              for r in rows]
    tmp = path.with_name(path.stem + ".tmp.png")
    cv2.imwrite(str(tmp), np.vstack(scaled))
    tmp.replace(path)


def batches(ds: SynthHazeDataset, start_batch: int, per_epoch: int, size: int, workers: int, device: torch.device):
    """The epoch's batches from ``start_batch`` on, in order: the same crops whether ``workers`` processes
    make them (a GPU run, where haze synthesis on one core would starve the GPU) or the main thread does."""
    if workers <= 0:
        for b in range(start_batch, per_epoch):
            yield batch_of(ds, b * size, size, device)
        return
    from torch.utils.data import DataLoader, Subset

    indices = range(start_batch * size, per_epoch * size)
    # spawn, not fork: a child forked while OpenCV's or torch's thread pools hold a lock can wait on it
    # forever (seen here); a stuck worker becomes an error after ``timeout`` instead of a silent hang
    loader = DataLoader(Subset(ds, indices), batch_size=size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4, drop_last=True,
                        worker_init_fn=_one_thread_worker, multiprocessing_context="spawn", timeout=300)
    batches_in = iter(loader)
    try:
        for hazy, clear in batches_in:
            yield hazy.to(device, non_blocking=True), clear.to(device, non_blocking=True)
    finally:
        del batches_in  # shuts the workers down now, not at interpreter exit (a GPU run hung there)


def _one_thread_worker(_: int) -> None:
    """Each worker makes whole samples; OpenCV's and torch's own thread pools would only oversubscribe."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def batch_of(ds: SynthHazeDataset, start: int, size: int, device: torch.device):
    items = [ds[i] for i in range(start, start + size)]
    hazy = torch.stack([h for h, _ in items]).to(device)
    clear = torch.stack([c for _, c in items]).to(device)
    return hazy, clear


# --------------------------------------------------------------------------- training
def main(args) -> int:
    cfg = load_config(getattr(args, "config", None))
    tc, mc, dc, vc = cfg["train"], cfg["model"], cfg["data"], cfg["val"]
    out = resolve(getattr(args, "out", None) or cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(getattr(args, "device", "auto"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: pick the fastest conv kernels once
    if device.type == "cpu" and tc["threads"]:
        torch.set_num_threads(int(tc["threads"]))
    torch.manual_seed(int(cfg["seed"]))
    log = open(out / "train.log", "a")
    try:
        return _train(args, cfg, out, device, log)
    finally:
        log.close()


def _train(args, cfg: dict, out: Path, device: torch.device, log) -> int:
    tc, mc, dc, vc = cfg["train"], cfg["model"], cfg["data"], cfg["val"]

    def say(msg: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log.flush()

    gen = RIGenerator(int(mc["width"]), int(mc["blocks"])).to(device)
    disc = RIDiscriminator(int(mc["d_width"])).to(device)
    betas = tuple(tc["betas"])
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(tc["lr_g"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(tc["lr_d"]), betas=betas)
    weights = LossWeights(**{k: float(v) for k, v in cfg["loss"].items()})

    pool = clear_pool(dc["clear"])
    ds = SynthHazeDataset(pool, patch=int(dc["patch"]), length=int(dc["samples_per_epoch"]), seed=int(cfg["seed"]),
                          short_side=tuple(dc["short_side"]), params=haze_params(dc.get("haze")))
    val = None
    if vc["hazy"] and resolve(vc["hazy"]).is_dir() and resolve(vc["clear"]).is_dir():
        val = PairedFolderDataset(resolve(vc["hazy"]), resolve(vc["clear"]), limit=vc["limit"])
    batch = int(tc["batch"])
    per_epoch = max(1, len(ds) // batch)
    total = per_epoch * int(tc["epochs"])
    if tc["max_iterations"]:
        total = min(total, int(tc["max_iterations"]))

    history: dict[str, list[float]] = {}
    iteration, epoch, start_batch = 0, 0, 0
    if getattr(args, "resume", False) and (out / "last.pt").is_file():
        ck = load_checkpoint(out / "last.pt", map_location=device)
        gen.load_state_dict(ck["generator"])
        disc.load_state_dict(ck["discriminator"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        iteration, epoch, start_batch = int(ck["iteration"]), int(ck["epoch"]), int(ck["batch"])
        history = {k: list(v) for k, v in ck["history"].items()}
        say(f"resumed at epoch {epoch} batch {start_batch} (iteration {iteration})")
    elif getattr(args, "resume", False):
        say("--resume given but no last.pt; starting fresh")
    if getattr(args, "init", None) and iteration == 0:
        init = load_checkpoint(args.init, map_location=device)
        try:
            gen.load_state_dict(init.get("generator", init))
            if "discriminator" in init:
                disc.load_state_dict(init["discriminator"])
        except RuntimeError as e:
            raise WeightsError(str(args.init), f"does not fit this model ({str(e).splitlines()[0][:160]})") from None
        history = {k: list(v) for k, v in init.get("history", {}).items()}
        say(f"initialised from {args.init} (generator{' + discriminator' if 'discriminator' in init else ''}); "
            f"fresh schedule")
    max_seconds = float(tc["max_seconds"]) if tc["max_seconds"] else None
    started = time.monotonic()
    say(f"pool {len(pool)} clear images in {len(ds.groups)} groups; {per_epoch} batches/epoch; {total} iterations; "
        f"device {device}")

    def checkpoint(next_batch: int) -> None:
        save_checkpoint(out / "last.pt", generator=gen.state_dict(), discriminator=disc.state_dict(),
                        opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), iteration=iteration,
                        epoch=epoch, batch=next_batch, history=history, config=json.dumps(cfg))
        save_checkpoint(out / "rigan.pt", **gen.state_dict())

    def out_of_time() -> bool:
        return max_seconds is not None and time.monotonic() - started >= max_seconds

    def schedule() -> float:
        """lr factor: cosine over the iterations, or over the time budget when that ends first."""
        progress = iteration / max(total, 1)
        if max_seconds is not None:
            progress = max(progress, (time.monotonic() - started) / max_seconds)
        return _cosine(progress, float(tc["lr_floor"]))

    from tqdm import tqdm

    sums: dict[str, float] = {}
    progress = tqdm(total=total, initial=iteration, desc="rigan", unit="it", dynamic_ncols=True,
                    disable=getattr(args, "no_progress", False))
    gen.train()
    disc.train()
    try:
        while iteration < total and epoch < int(tc["epochs"]) and not out_of_time():
            ds.epoch = epoch
            stream = batches(ds, start_batch, per_epoch, batch, int(tc["workers"]), device)
            next_b = start_batch
            for b, (hazy, clear) in enumerate(stream, start=start_batch):
                if iteration >= total or out_of_time():
                    break
                next_b = b + 1
                f = schedule()
                for group in opt_g.param_groups:
                    group["lr"] = float(tc["lr_g"]) * f
                for group in opt_d.param_groups:
                    group["lr"] = float(tc["lr_d"]) * f
                adversarial = iteration >= int(tc["adv_start"]) and weights.adversarial > 0
                dehazed = gen(hazy)
                parts = {}
                if adversarial:  # D step: real (hazy, clear) vs fake (hazy, G(hazy))
                    ld = d_loss(disc(hazy, clear), disc(hazy, dehazed.detach()))
                    check_finite(ld, "discriminator", iteration)
                    opt_d.zero_grad(set_to_none=True)
                    ld.backward()
                    opt_d.step()
                    parts["d"] = float(ld.detach())
                fake_logits = disc(hazy, dehazed) if adversarial else None
                lg, g_parts = generator_loss(fake_logits, dehazed, clear, weights)
                check_finite(lg, "generator", iteration)
                opt_g.zero_grad(set_to_none=True)
                lg.backward()
                opt_g.step()
                parts.update(g_parts, g=float(lg.detach()))
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                sums["n"] = sums.get("n", 0.0) + 1
                iteration += 1
                progress.update(1)
                progress.set_postfix(l1=f"{g_parts['l1']:.4f}", ssim=f"{1 - g_parts['ssim']:.3f}", ep=epoch)
                if iteration % 10 == 0:
                    say(f"it {iteration} ep {epoch} " + " ".join(f"{k}={v:.4f}" for k, v in parts.items()))
                if iteration % int(tc["checkpoint_every"]) == 0:
                    checkpoint(b + 1)
            stream.close()
            start_batch = 0
            n = max(sums.pop("n", 1.0), 1.0)
            latest = {f"train_{k}": v / n for k, v in sums.items()}  # what this epoch measured (no stale val_*)
            sums = {}
            finished = next_b >= per_epoch
            epoch += int(finished)  # a run stopped by its time budget ends mid-epoch and resumes there
            metrics, rows = validate(gen, val, device, keep=int(vc["sheet"]))
            latest.update(metrics)
            for k, v in latest.items():
                history.setdefault(k, []).append(v)
            say(f"epoch {epoch} {'done' if finished else f'stopped at batch {next_b} (time budget)'}; " + " ".join(f"{k}={v:.4f}" for k, v in latest.items()))
            checkpoint(0 if finished else next_b)
            (out / "history.json").write_text(json.dumps(history, indent=1))
            save_curves(out / "curves.png", history, title="RI-GAN training")
            synth = []
            for i in range(2):
                h, c = batch_of(ds, i, 1, device)
                with torch.no_grad():
                    gen.eval()
                    synth.append(np.hstack([as_uint8(h[0]), as_uint8(gen(h)[0]), as_uint8(c[0])]))
                    gen.train()
            save_sheet(out / "samples.png", rows + synth)
    finally:
        progress.close()
    say(f"finished at iteration {iteration}")
    print(f"rigan: {iteration} iterations; weights {out / 'rigan.pt'}; curves {out / 'curves.png'}")
    return 0


# --------------------------------------------------------------------------- export
def load_generator(path: str | Path) -> RIGenerator:
    """Generator of the right width/depth for a state_dict file (``rigan.pt`` or a ``last.pt``)."""
    state = load_checkpoint(path)
    if "generator" in state and isinstance(state["generator"], dict):
        state = state["generator"]
    try:
        width, blocks = generator_shape(state)
    except (KeyError, IndexError, AttributeError):
        raise WeightsError(str(path), "not an RI-GAN generator state_dict") from None
    gen = RIGenerator(width, blocks)
    try:
        gen.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(str(path), f"weights do not fit RIGenerator ({' '.join(str(e).split())[:160]})") from None
    return gen.eval()


def onnx_from_torch(gen: RIGenerator, out: str | Path, opset: int = 17) -> Path:
    """Export with dynamic batch, height and width (multiples of the stride at run time).

    Outputs ``dehazed`` (N x 3 x H x W), ``transmission`` (N x 1 x H x W) and
    ``airlight`` (N x 3 x 1 x 1): the stage applies t and A at full resolution.
    """
    if not isinstance(gen, RIGeneratorPorts):
        ports = RIGeneratorPorts(gen.width, gen.blocks)
        ports.load_state_dict(gen.state_dict())
        gen = ports.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.onnx")
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(gen, (torch.rand(1, 3, 64, 64),), str(tmp), input_names=list(gen.input_names),
                          output_names=list(gen.output_names), opset_version=opset,
                          dynamic_axes={"hazy": axes, "dehazed": axes, "transmission": axes, "airlight": {0: "n"}},
                          dynamo=False)
    tmp.replace(out)
    return out


def export(args) -> int:
    weights = Path(args.weights) if getattr(args, "weights", None) else DEFAULT_WEIGHTS
    path = onnx_from_torch(load_generator(weights), args.out)
    print(f"rigan: exported {weights} -> {path}")
    return 0
