"""``hazeflow train msfgnet`` and ``hazeflow export msfgnet``.

Training draws augmented windows (training.data.scenes) from CDnet sequences,
synthetic traffic and moving sprites, optimises BCE + soft Dice, and after each
epoch scores the validation frames exactly as the pipeline stage would (same
working size, same window, upsampled probability, threshold) with the CDnet
rules. ``OUT/last.pt`` is the resumable checkpoint, ``OUT/best.pt`` the best
epoch by validation F-measure, ``OUT/curves.png`` and ``OUT/history.json`` the
curves.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pipeline.errors import ConfigError
from pipeline.stages.msfgnet import grey_small, working_size
from pipeline.stages.base import resolve_path
from training.common import load_checkpoint, load_yaml, pick_device, save_checkpoint, save_curves
from training.data.cdnet import CdnetSequence, load_sequence, window_numbers
from training.data.scenes import Augment, WindowSampler, load_textures, traffic_sequences
from training.losses.segmentation import foreground_loss
from pipeline.cdnet import Confusion
from training.metrics import confusion_of
from training.models.msfgnet import INPUT_NAME, OUTPUT_NAME, MSFgNet, MsfgnetSpec

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train_msfgnet.yaml"
DEFAULT_OUT = "runs/msfgnet"

DEFAULTS = {
    "seed": 1,
    "model": {},
    "data": {"cdnet": [], "validate": [], "traffic": {"sequences": 0, "frames": 300, "size": [320, 240]},
             "validate_traffic": {"sequences": 0, "frames": 200, "size": [320, 240]},
             "validate_families": {"families": [], "seeds": []},
             "textures": [], "mix": {"cdnet": 0.5, "traffic": 0.25, "sprites": 0.25}},
    "augment": {},
    "train": {"epochs": 20, "iterations": 150, "batch": 16, "lr": 3e-3, "weight_decay": 1e-4,
              "dice_weight": 1.0, "threads": 1},
    "validate": {"scale": 0.5, "stride": 5, "threshold": 0.5, "select": "cdnet"},
}
SELECT = ("cdnet", "protocol")  # epoch score: CDnet mean F, or docs/models.md rule 1 (1/2 CDnet + 1/2 families)


# --- configuration ----------------------------------------------------------------------
def load_config(path: str | Path | None) -> dict:
    raw = load_yaml(path or DEFAULT_CONFIG)
    config = {}
    for key, default in DEFAULTS.items():
        value = raw.pop(key, default)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key}", "expected a mapping")
            unknown = set(value) - set(default) if default and key not in ("model", "augment") else set()
            if unknown:
                raise ConfigError(f"{path}: {key}.{sorted(unknown)[0]}", f"unknown key; valid: {', '.join(default)}")
            value = {**default, **value}
            for sub, sub_default in default.items():  # one more level: data.traffic etc.
                if sub != "mix" and isinstance(sub_default, dict) and isinstance(value[sub], dict):
                    value[sub] = {**sub_default, **value[sub]}
        config[key] = value
    if raw:
        raise ConfigError(f"{path}: {sorted(raw)[0]}", f"unknown key; valid: {', '.join(DEFAULTS)}")
    if config["validate"]["select"] not in SELECT:
        raise ConfigError(f"{path}: validate.select", f"must be one of {', '.join(SELECT)}, got {config['validate']['select']!r}")
    config["spec"] = _dataclass_from(MsfgnetSpec, config["model"], "model")
    aug = dict(config["augment"])
    for k, v in aug.items():
        if isinstance(v, list):
            aug[k] = tuple(v)
    config["augment_obj"] = _dataclass_from(Augment, aug, "augment")
    return config


def _dataclass_from(cls, values: dict, section: str):
    valid = {f.name for f in fields(cls)}
    unknown = set(values) - valid
    if unknown:
        raise ConfigError(f"{section}.{sorted(unknown)[0]}", f"unknown key; valid: {', '.join(sorted(valid))}")
    return cls(**values)


def parse_range(text: str, where: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ConfigError(where, f"expected frames as FIRST:LAST, got {text!r}") from None
    return a, b


def load_cdnet_entries(entries: list, where: str) -> list[tuple[CdnetSequence, tuple[int, int]]]:
    out = []
    for i, entry in enumerate(entries):
        seq = load_sequence(resolve_path(entry["path"]))
        rng = parse_range(entry.get("frames", f"{seq.temporal_roi[0]}:{seq.temporal_roi[1]}"), f"{where}[{i}].frames")
        seq.check_range(*rng)
        out.append((seq, rng))
    return out


# --- validation -------------------------------------------------------------------------
@torch.no_grad()
def predict(model: MSFgNet, seq: CdnetSequence, numbers: list[int], scale: float, stride: int,
            device: torch.device, batch: int = 32) -> list[np.ndarray]:
    """Foreground probability at full resolution for each frame number, as the stage computes it."""
    model.eval()
    h, w = seq.grey.shape[1:]
    size = working_size(w, h, scale)
    T = model.spec.frames
    cache: dict[int, np.ndarray] = {}

    def small(n: int) -> np.ndarray:
        n = min(max(n, seq.first), seq.last)
        if n not in cache:
            cache[n] = grey_small(seq.grey[n - seq.first], size)
        return cache[n]

    out = []
    for start in range(0, len(numbers), batch):
        chunk = numbers[start:start + batch]
        x = np.stack([[small(n) for n in window_numbers(c, T, stride)] for c in chunk]).astype(np.float32) / 255
        prob = model(torch.from_numpy(x).to(device)).cpu().numpy()[:, 0]
        out.extend(cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in prob)
    return out


def validate(model, sequences, settings: dict, device) -> dict[str, float]:
    """F-measure per validation sequence (CDnet rules) and their mean.

    Sequences named ``family:NAME#SEED`` are summed per family over their seeds
    (the protocol's family score) and reported as ``family:NAME``.
    """
    scores, families = {}, {}
    for seq, (a, b) in sequences:
        numbers = list(range(a, b + 1))
        probs = predict(model, seq, numbers, settings["scale"], settings["stride"], device)
        masks = [(p > settings["threshold"]) for p in probs]
        labels = [seq.labels[n - seq.first] for n in numbers]
        confusion = confusion_of(masks, labels, seq.roi)
        if seq.name.startswith("family:"):
            group = families.setdefault(seq.name.split("#")[0], Confusion())
            group += confusion
        else:
            scores[seq.name] = confusion.metrics()["F-measure"]
    scores.update({name: c.metrics()["F-measure"] for name, c in families.items()})
    if scores:
        scores["mean"] = float(np.mean(list(scores.values())))
    return scores


# --- training ---------------------------------------------------------------------------
def family_sequences(spec: dict) -> list:
    """The protocol's synthetic families at the given seeds, as in-memory sequences scored from FIRST_SCORED."""
    from training.data.families import FIRST_SCORED, SYNTHETIC, synthetic_grey

    out = []
    for family in spec["families"]:
        if family not in SYNTHETIC:
            raise ConfigError(f"data.validate_families.families: {family}", f"unknown; valid: {', '.join(SYNTHETIC)}")
        for seed in spec["seeds"]:
            grey, truth = synthetic_grey(family, int(seed))
            seq = CdnetSequence(f"family:{family}#{seed}", Path(f"synthetic:{family}#{seed}"), 1, grey, truth,
                                None, (FIRST_SCORED, len(grey)))
            out.append((seq, (FIRST_SCORED, len(grey))))
    return out


def build_sampler(config: dict, cdnet) -> WindowSampler:
    data = config["data"]
    traffic = []
    if data["traffic"]["sequences"] and data["mix"].get("traffic", 0) > 0:
        t = data["traffic"]
        traffic = traffic_sequences(int(t["sequences"]), int(t["frames"]), tuple(t["size"]), seed=config["seed"])
    textures = load_textures([resolve_path(p) for p in data["textures"]]) if data["mix"].get("sprites", 0) > 0 else []
    return WindowSampler(config["spec"].frames, config["augment_obj"], cdnet, traffic, textures, dict(data["mix"]))


def lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up then cosine decay to 2 % of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return float(base * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * progress))))


def main(args) -> int:
    config = load_config(getattr(args, "config", None))
    tc, vc = config["train"], config["validate"]
    torch.set_num_threads(int(tc["threads"]))
    cv2.setNumThreads(1)
    device = pick_device(getattr(args, "device", "auto"))
    out = Path(getattr(args, "out", None) or DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config["seed"])
    cdnet = load_cdnet_entries(config["data"]["cdnet"], "data.cdnet")
    val = load_cdnet_entries(config["data"]["validate"], "data.validate")
    vt = config["data"]["validate_traffic"]
    if vt["sequences"]:  # unseen synthetic scenes (other seed) as a generalisation check
        val += [(s, (s.first + 30, s.last)) for s in
                traffic_sequences(int(vt["sequences"]), int(vt["frames"]), tuple(vt["size"]), seed=config["seed"] + 1000)]
    val += family_sequences(config["data"]["validate_families"])
    sampler = build_sampler(config, cdnet)

    model = MSFgNet(config["spec"]).to(device)
    if getattr(args, "init", None) and not getattr(args, "resume", False):
        model.load_state_dict(model_from_checkpoint(args.init)[0].state_dict())
        print(f"starting from the weights of {args.init}", file=sys.stderr)
    optimiser = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    history: dict[str, list[float]] = {"loss": [], "val_F": [], "val_F_synthetic": []}
    start_epoch, best = 0, -1.0
    last = out / "last.pt"
    if getattr(args, "resume", False):
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, best = int(state["epoch"]), float(state["best"])
        history = {k: list(v) for k, v in state["history"].items()}
        print(f"resumed from {last} at epoch {start_epoch}", file=sys.stderr)

    epochs, iterations = int(tc["epochs"]), int(tc["iterations"])
    total = epochs * iterations
    command = "hazeflow train msfgnet " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if sys.argv[1:2] == ["train"] \
        else f"hazeflow train msfgnet --config {getattr(args, 'config', None) or DEFAULT_CONFIG}"
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        model.train()
        rng = np.random.default_rng([config["seed"], epoch])  # per-epoch stream: --resume repeats it exactly
        losses = []
        bar = tqdm(range(iterations), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=getattr(args, "no_progress", False))
        for it in bar:
            step = epoch * iterations + it
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step, total, tc["lr"])
            frames, target, weight = (torch.from_numpy(a).to(device) for a in sampler.batch(rng, int(tc["batch"])))
            loss = foreground_loss(model.logits(frames), target, weight, tc["dice_weight"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        scores = validate(model, val, vc, device)
        cdnet_scores = [v for k, v in scores.items() if not k.startswith(("traffic", "family:")) and k != "mean"]
        synth_scores = [v for k, v in scores.items() if k.startswith("traffic")]
        family_scores = [v for k, v in scores.items() if k.startswith("family:")]
        f_real = float(np.mean(cdnet_scores)) if cdnet_scores else float("nan")
        f_syn = float(np.mean(synth_scores)) if synth_scores else float("nan")
        history["loss"].append(float(np.mean(losses)))
        history["val_F"].append(f_real)
        history["val_F_synthetic"].append(f_syn)
        score = f_real if cdnet_scores else f_syn
        if vc["select"] == "protocol":  # docs/models.md, protocol rule 1
            score = 0.5 * f_real + 0.5 * float(np.mean(family_scores))
            history.setdefault("val_S", []).append(score)
        meta = {"spec": config["spec"].to_dict(), "epoch": epoch + 1, "val": scores, "seed": config["seed"],
                "command": command, "validate": vc, "data": data_description(config)}
        if score > best:
            best = score
            save_checkpoint(out / "best.pt", state_dict=model.state_dict(), meta=meta)
        save_checkpoint(last, model=model.state_dict(), optimiser=optimiser.state_dict(), epoch=epoch + 1,
                        best=best, history=history, meta=meta)
        save_curves(out / "curves.png", {"training loss": history["loss"], "val F-measure (CDnet)": history["val_F"],
                                         "val F-measure (synthetic)": history["val_F_synthetic"]}, "MSFgNet")
        (out / "history.json").write_text(json.dumps({"history": history, "best": best, "val": scores}, indent=1))
        print(f"epoch {epoch + 1}/{epochs} loss {history['loss'][-1]:.4f} val F {f_real:.4f} "
              f"synthetic F {f_syn:.4f} ({time.time() - t0:.0f} s)", flush=True)
    return 0


# --- export -----------------------------------------------------------------------------
def model_from_checkpoint(path: str | Path) -> tuple[MSFgNet, dict]:
    state = load_checkpoint(path)
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    weights = state.get("state_dict", state.get("model", state))
    model = MSFgNet(MsfgnetSpec(**meta.get("spec", {})))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        from pipeline.errors import WeightsError
        raise WeightsError(str(path), f"weights do not fit MSFgNet ({' '.join(str(e).split())[:160]})") from None
    return model.eval(), meta


def export_onnx(model: MSFgNet, path: str | Path, height: int = 120, width: int = 160) -> Path:
    from engines.export import onnx_from_torch

    example = torch.rand(1, model.spec.frames, height, width)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    return onnx_from_torch(model, (example,), path, [INPUT_NAME], [OUTPUT_NAME], axes)


def data_description(config: dict) -> dict:
    """What the weights were trained and validated on, for the manifest."""
    data = config["data"]
    return {
        "train": [f"{e['path']} frames {e.get('frames', 'temporalROI')}" for e in data["cdnet"]],
        "validate": [f"{e['path']} frames {e.get('frames', 'temporalROI')} (never trained on)" for e in data["validate"]],
        "synthetic": {"traffic": data["traffic"], "sprite_textures": data["textures"], "mix": data["mix"]},
    }


def evaluate_stage(onnx_path: Path, entries: list) -> dict[str, float]:
    """F-measure of the pipeline stage with its default settings (ONNX Runtime) on CDnet frames.

    Every frame is fed in order from the first, as ``hazeflow eval foreground`` does.
    """
    from pipeline.cdnet import Confusion, read_image
    from pipeline.frame import Frame
    from pipeline.stages.msfgnet import MsfgnetStage

    scores = {}
    config = MsfgnetStage.Config(weights=str(onnx_path), backend="onnxruntime", threads=1)
    for seq, (a, b) in entries:
        conf = Confusion()
        with MsfgnetStage(config) as stage:
            for n in range(seq.first, b + 1):  # the colour frames, decoded as the eval command does
                image = read_image(seq.folder / "input" / f"in{n:06d}.jpg")
                frame = stage.process([Frame(seq.name, n, None, image)])[0]
                if n >= a:
                    conf.add(frame.data["mask"], seq.labels[n - seq.first], seq.roi)
        scores[seq.name] = conf.metrics()["F-measure"]
    return scores


def stage_defaults() -> dict:
    from pipeline.stages.msfgnet import MsfgnetStage

    c = MsfgnetStage.Config()
    return {"scale": c.scale, "stride": c.stride, "threshold": c.threshold}


def export(args) -> int:
    """Export ``--weights`` (best.pt or a state_dict) to ``--out`` (.onnx).

    Exporting into ``weights/`` ships the model: the state_dict goes next to the
    graph as ``.pt``, both get manifest entries, and the validation F-measure is
    measured again through the pipeline stage on the shipped ONNX graph.
    """
    from engines.weights import WEIGHTS_DIR, record

    torch.set_num_threads(1)
    weights = Path(args.weights or Path(DEFAULT_OUT) / "best.pt")
    model, meta = model_from_checkpoint(weights)
    out = Path(args.out)
    export_onnx(model, out)
    print(f"wrote {out}")
    if out.resolve().parent != WEIGHTS_DIR.resolve():
        return 0
    pt = out.with_suffix(".pt")
    save_checkpoint(pt, **model.state_dict())
    config = load_config(getattr(args, "config", None))
    entry = {"model": "msfgnet", "spec": meta.get("spec", model.spec.to_dict()), "epoch": meta.get("epoch"),
             "seed": meta.get("seed", config["seed"]), "command": meta.get("command"),
             "export_command": f"hazeflow export msfgnet --weights {weights} --out {out}",
             "data": meta.get("data") or data_description(config), "stage_settings": stage_defaults()}
    for path in (pt, out):
        record(path, format="onnx" if path.suffix == ".onnx" else "state_dict", **entry)
    val = load_cdnet_entries(config["data"]["validate"], "data.validate")
    measured = evaluate_stage(out, val)
    metrics = {f"val_F_{name.replace('cdnet2014-', '')}_{a}_{b}": round(measured[seq.name], 4)
               for (seq, (a, b)), name in zip(val, measured)}
    metrics["val_F_synthetic_unseen"] = round(float(np.mean([v for k, v in meta.get("val", {}).items()
                                                             if k.startswith("traffic")] or [float("nan")])), 4)
    metrics["measured_with"] = "pipeline stage msfgnet, ONNX Runtime CPU, CDnet rules (pipeline.cdnet.Confusion)"
    for path in (pt, out):
        record(path, format="onnx" if path.suffix == ".onnx" else "state_dict", metrics=metrics, **entry)
    print(f"wrote {pt}; recorded both in {WEIGHTS_DIR / 'manifest.json'}; metrics {metrics}")
    return 0
