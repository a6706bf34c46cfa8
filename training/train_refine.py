"""``hazeflow train msfgnet-refine``: MSFgNet's learned edge (training.models.refine).

The head learns to correct, at full size, the edge of the shipped MSFgNet's upsampled
probability. Its data are made by the pipeline stage itself (``refine: off``, stage defaults
otherwise, camera-motion compensation on), so the head sees the probabilities, windows and
compensation it will see at run time; its inputs come from pipeline.refine, as in the stage.

Roles (docs/models.md, "Protocol for unseen cameras"; the config names them):

* train: the synthetic nuisance families with the config's train seeds (401-404, none of the
  protocol's validation or test seeds), every second scored frame; highway 470-1199 (every second
  frame), plain and shaken by a trajectory of its own seed;
* validation: the protocol's (seeds 201-202, highway 1200-1449 plain and shaken); it chooses the
  checkpoint: the highest mean F over the ten families among the checkpoints where no family is
  more than ``max_loss`` below the guided refinement's F on the same frames. None passing is an error.

The test split is never read here (tools/eval_families.py reports it).

    hazeflow train msfgnet-refine [--config configs/train_msfgnet_refine.yaml] [--out runs/msfgnet_refine]
    hazeflow export msfgnet-refine --weights runs/msfgnet_refine/best.pt --out weights/msfgnet_refine.onnx
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import load_checkpoint, load_yaml, save_checkpoint
from pipeline.stages.base import resolve_path
from training.data.families import HIGHWAY_WARMUP, highway_frames
from training.models.refine import INPUT_NAME, OUTPUT_NAME, MsfgnetRefine, RefineSpec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "train_msfgnet_refine.yaml"
DEFAULT_OUT = "runs/msfgnet_refine"


class Frames:
    """Full-frame inputs (pipeline.refine.FEATURES) and CDnet labels of one sequence set, compact."""

    def __init__(self):
        self.prob, self.guided, self.bgr, self.change, self.labels = [], [], [], [], []

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.prob.append(x[0].astype(np.float16))
        self.guided.append(x[1].astype(np.float16))
        self.bgr.append(np.round(x[2:5] * 255).astype(np.uint8))
        self.change.append(x[5:].astype(np.float16))
        self.labels.append(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def features(self, i: int, y0: int = 0, x0: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
        h, w = size or self.labels[i].shape
        rows, cols = slice(y0, y0 + h), slice(x0, x0 + w)
        return np.concatenate([self.prob[i][None, rows, cols], self.guided[i][None, rows, cols],
                               self.bgr[i][:, rows, cols] / np.float32(255),
                               self.change[i][:, rows, cols]]).astype(np.float32)


def collect(sequences, stride_frames: int = 1) -> Frames:
    """Run the stage (``refine: off``) over ``sequences`` (iterators of (image, labels, scored, roi)) and keep
    the inputs of every ``stride_frames``-th scored frame, with labels (ROI outside -> 85, not scored)."""
    from pipeline.commands.eval_foreground import build_stage
    from pipeline.frame import Frame
    from pipeline.refine import change_maps, refine_inputs
    from pipeline.stages.msfgnet import refine_guided

    out = Frames()
    stage = build_stage("msfgnet", refine="off")
    with stage:
        stage.setup()
        for k, frames in enumerate(sequences):
            name, scored_seen = f"seq{k}", 0
            stage.reset_stream(name)
            for i, (image, labels, scored, roi) in enumerate(frames, start=1):
                frame = stage.process([Frame(name, i, None, image)])[0]
                if not scored:
                    continue
                scored_seen += 1
                if (scored_seen - 1) % stride_frames:
                    continue
                h, w = image.shape[:2]
                window = next(iter(stage._inputs.values()))[0]   # the network input of this frame
                prob = np.asarray(frame.data["fg_prob"])
                x = refine_inputs(prob, refine_guided(prob, image), image, change_maps(window), (0, 0, w, h))[0]
                labels = labels.copy()
                if roi is not None:
                    labels[roi == 0] = 85
                out.add(x, labels)
            stage.reset_stream(name)
    return out


def training_sets(data: dict) -> dict[str, Frames]:
    from training.data.families import SYNTHETIC, synthetic_frames

    sets = {}
    for family in SYNTHETIC:
        seqs = [((im, lab, sc, None) for im, lab, sc in synthetic_frames(family, s)) for s in data["seeds"]]
        sets[family] = collect(seqs, data["every"])
    first, last = data["highway_frames"]
    folder = resolve_path(data["highway"])
    sets["highway"] = collect([highway_frames(folder, first, last, data["every"], None)])
    sets["highway-jitter"] = collect([highway_frames(folder, first, last, data["every"], data["shake_seed"])])
    return sets


def validation_sets(highway: Path) -> dict[str, Frames]:
    """The protocol's validation families (tools/eval_families.py's sequences, split ``validation``)."""
    from training.data.families import FAMILIES, HIGHWAY_FRAMES, JITTER_SEED, SEEDS, SYNTHETIC, synthetic_frames

    sets = {}
    for family in FAMILIES:
        if family in SYNTHETIC:
            seqs = [((im, lab, sc, None) for im, lab, sc in synthetic_frames(family, s)) for s in SEEDS["validation"]]
        else:
            first, last = HIGHWAY_FRAMES["validation"]
            seqs = [highway_frames(highway, first, last, 1, JITTER_SEED["validation"] if family == "highway-jitter" else None,
                                   warmup=HIGHWAY_WARMUP)]
        sets[family] = collect(seqs)
    return sets


def targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(target, weight): 255 is foreground, 0 and 50 (CDnet's shadow) background, the rest not scored."""
    return (labels == 255).astype(np.float32), np.isin(labels, (0, 50, 255)).astype(np.float32)


def crops(sets: dict[str, Frames], rng: np.random.Generator, n: int, size: int, band_share: float):
    """``n`` random crops; ``band_share`` of them centred on a pixel where the guided probability is
    unsure (0.02-0.98) or wrong, the rest anywhere. Sets are drawn with equal chance."""
    names = list(sets)
    xs, ts, ws = [], [], []
    for _ in range(n):
        s = sets[names[rng.integers(len(names))]]
        i = int(rng.integers(len(s)))
        H, W = s.labels[i].shape
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        if rng.random() < band_share:
            g = s.guided[i].astype(np.float32)
            t, w = targets(s.labels[i])
            band = np.argwhere(((g > 0.02) & (g < 0.98)) | ((g > 0.5) != (t > 0)) & (w > 0))
            if len(band):
                cy, cx = band[rng.integers(len(band))]
        y0, x0 = int(np.clip(cy - size // 2, 0, H - size)), int(np.clip(cx - size // 2, 0, W - size))
        xs.append(s.features(i, y0, x0, (size, size)))
        t, w = targets(s.labels[i][y0:y0 + size, x0:x0 + size])
        ts.append(t)
        ws.append(w)
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ts))[:, None],
            torch.from_numpy(np.stack(ws))[:, None])


def f_measures(sets: dict[str, Frames], predict) -> dict[str, float]:
    """CDnet F-measure per set of ``predict(features) -> mask`` (bool HxW) over every frame."""
    from pipeline.cdnet import Confusion

    scores = {}
    for name, s in sets.items():
        conf = Confusion()
        for i in range(len(s)):
            conf.add(predict(s, i).astype(np.uint8) * 255, s.labels[i], None)
        scores[name] = round(conf.metrics()["F-measure"], 4)
    return scores


def head_scores(model: MsfgnetRefine, sets: dict[str, Frames]) -> dict[str, float]:
    def predict(s, i):
        with torch.no_grad():
            return (model(torch.from_numpy(s.features(i))[None])[0, 0] > 0).numpy()
    return f_measures(sets, predict)


def main(args) -> int:
    unsupported = [f"--{k}" for k in ("resume", "init") if getattr(args, k, None)]
    if getattr(args, "device", "auto") == "cuda":
        unsupported.append("--device cuda")
    if unsupported:
        print(f"hazeflow train msfgnet-refine: {', '.join(unsupported)} not supported: the run is about 8 minutes "
              "on 2 CPU cores and starts afresh", file=sys.stderr)
        return 2
    config = load_yaml(args.config or DEFAULT_CONFIG)
    out = Path(args.out or DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    train, val_rule = config["train"], config["validate"]
    torch.manual_seed(config["seed"])
    torch.set_num_threads(train.get("threads", 2))
    rng = np.random.default_rng(config["seed"])
    t0 = time.time()
    print("collecting training inputs with the msfgnet stage (refine: off) ...", flush=True)
    sets = training_sets(config["data"])
    print(f"  {sum(len(s) for s in sets.values())} frames in {time.time() - t0:.0f} s; validation ...", flush=True)
    val = validation_sets(resolve_path(config["data"]["highway"]))
    guided = f_measures(val, lambda s, i: s.guided[i] > 0.5)
    print(f"  guided refinement on validation: {guided}", flush=True)
    spec = RefineSpec(**config.get("model", {}))
    model = MsfgnetRefine(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    steps = train["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, train["lr"], total_steps=steps)
    history, best = [], None
    for step in range(1, steps + 1):
        x, t, w = crops(sets, rng, train["batch"], train["crop"], train["band_share"])
        loss = (F.binary_cross_entropy_with_logits(model(x), t, reduction="none") * w).sum() / w.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % train["validate_every"] and step != steps:
            continue
        model.eval()
        scores = head_scores(model, val)
        model.train()
        mean = float(np.mean(list(scores.values())))
        worst = min(scores[k] - guided[k] for k in scores)
        ok = worst >= -val_rule["max_loss"]
        history.append({"step": step, "loss": round(loss.item(), 5), "mean_F": round(mean, 4),
                        "worst_change": round(worst, 4), "allowed": ok, "F": scores})
        print(f"step {step}: loss {loss.item():.4f}, validation mean F {mean:.4f}, worst change {worst:+.4f}"
              f"{'' if ok else ' (not allowed)'}; {time.time() - t0:.0f} s", flush=True)
        state = {"model": model.state_dict(), "spec": spec.to_dict(), "step": step, "val": scores,
                 "val_guided": guided, "seed": config["seed"], "data": config["data"],
                 "command": " ".join(["hazeflow", "train", "msfgnet-refine"] + sys.argv[3:])}
        save_checkpoint(out / "last.pt", **state)
        if ok and (best is None or mean > best):
            best = mean
            save_checkpoint(out / "best.pt", **state)
    (out / "history.json").write_text(json.dumps({"guided": guided, "history": history}, indent=1) + "\n")
    if best is None:
        print(f"msfgnet-refine: no checkpoint kept every validation family within {val_rule['max_loss']} of the "
              "guided refinement; nothing written to best.pt", file=sys.stderr)
        return 1
    print(f"best: validation mean F {best:.4f} -> {out / 'best.pt'}")
    return 0


def model_from_checkpoint(path: str | Path) -> tuple[MsfgnetRefine, dict]:
    state = load_checkpoint(path)
    model = MsfgnetRefine(RefineSpec(**state["spec"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def export(args) -> int:
    """Export ``--weights`` (best.pt) to ``--out`` (.onnx); into ``weights/`` it also writes the
    state_dict and both manifest entries."""
    from engines.export import onnx_from_torch
    from engines.weights import WEIGHTS_DIR, record

    weights = Path(args.weights or Path(DEFAULT_OUT) / "best.pt")
    model, meta = model_from_checkpoint(weights)
    out = Path(args.out)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    onnx_from_torch(model, (torch.rand(1, model.spec.inputs, 64, 80),), out, [INPUT_NAME], [OUTPUT_NAME], axes)
    print(f"wrote {out}")
    if out.resolve().parent != WEIGHTS_DIR.resolve():
        return 0
    pt = out.with_suffix(".pt")
    save_checkpoint(pt, **model.state_dict())
    entry = {"model": "msfgnet_refine", "spec": meta["spec"], "step": meta["step"], "seed": meta["seed"],
             "command": meta.get("command"), "export_command": f"hazeflow export msfgnet-refine --weights {weights} "
                                                              f"--out {out}",
             "data": meta["data"], "metrics": {"val_F": meta["val"], "val_F_guided": meta["val_guided"],
                                               "measured_with": "training.train_refine.head_scores (whole frames)"}}
    for path in (pt, out):
        record(path, format="onnx" if path.suffix == ".onnx" else "state_dict", **entry)
    print(f"wrote {pt}; recorded both in {WEIGHTS_DIR / 'manifest.json'}")
    return 0
