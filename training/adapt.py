"""``hazeflow adapt``: fine-tune MSFgNet on one camera's unlabelled footage.

1. **Footage**: up to ``--minutes`` of the input, grey at the stage's working
   size (``scale`` 0.5), in memory; with the stage's ``stabilize: auto`` (the
   default) each frame is registered as the stage does and warped into its
   epoch's reference, so everything below sees the camera held still.
2. **Pseudo-labels** on a subset of frames: a pixel is foreground where three
   independent opinions agree that it moved, background where all three agree
   that it did not, and ignored otherwise:

   * a long-window median background (21 frames spread over +-100 frames
     around the frame; offline, so it may look ahead), thresholded on the
     absolute difference relative to the frame's noise level;
   * OpenCV MOG2 run over the whole footage in order;
   * the current model, confident only below 0.2 or above 0.8.

   A ring of 2 pixels around every confident foreground region is ignored too
   (boundaries are where the three disagree most).
3. **Split in time**: frames in the first 80 % of the footage train, the last
   20 % are held back (their windows may read older frames, never their labels).
4. **Fine-tuning** from the base model: AdamW, BCE + soft Dice on the confident
   pixels (training.losses.segmentation), random crops and flips of windows at
   the stage's stride. Checkpoint every 25 iterations in ``OUT/.adapt/``;
   ``--resume`` continues from it (the pseudo-labels are cached there too).
5. **Self-check on the held-back part**, base against adapted (docs/models.md,
   protocol rule 3): agreement F with the confident pseudo-labels of the
   held-back frames (made by the median and MOG2 alone: a model that voted
   would agree with itself by construction), the
   false-positive rate on frames the pseudo-labels call empty, and the flicker
   of the mask on background pixels between consecutive frames. The adapted
   model is kept only when it is better; otherwise the base model is written.
6. **Output**: ``OUT/msfgnet.pt``, ``OUT/msfgnet.onnx`` and ``OUT/manifest.json``
   (sha256 of both, written last through ``engines.weights.record``), plus
   ``OUT/adapt.json`` (the numbers and the decision). A stage selects the folder
   with ``msfgnet: {weights: OUT}``; it checks the hashes like the shipped files.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from engines.weights import record
from pipeline.cdnet import Confusion
from pipeline.errors import ConfigError, SourceError
from pipeline.sources import mask_credentials, open_source
from pipeline.stabilize import DEAD_BAND, Registrations, displacement, stabilize_mode
from pipeline.stages.msfgnet import MsfgnetStage, grey_small, registration_grey, working_size
from pipeline.stages.base import resolve_path
from training.common import load_checkpoint, save_checkpoint
from training.losses.segmentation import foreground_loss
from training.models.msfgnet import MSFgNet, MsfgnetSpec

FG, BG, IGNORE = 255, 0, 170   # pseudo-label values, CDnet's (170 = unknown, not scored)


@dataclass(frozen=True)
class AdaptSettings:
    """Adaptation knobs (chosen on validation data only: docs/models.md, protocol rule 3)."""

    iterations: int = 400           # fine-tuning steps (also bounded by the time budget)
    batch: int = 8
    crop: int = 96                  # window side at the working size
    lr: float = 5e-4
    weight_decay: float = 1e-4
    held_back: float = 0.2          # last fraction of the footage, never trained on
    labelled: int = 1200            # at most this many pseudo-labelled training frames
    median_frames: int = 21         # frames of the long-window median
    median_step: int = 10           # frames between two of them
    model_low: float = 0.2          # the model is confident below / above these
    model_high: float = 0.8
    diff_low: float = 1.5           # |I - median| below diff_low * noise: background vote
    diff_high: float = 4.0          # above diff_high * noise: foreground vote
    min_noise: float = 3.0          # grey levels; floor of the per-frame noise estimate
    ring: int = 2                   # pixels ignored around confident foreground
    empty_fraction: float = 1e-3    # a frame is empty when pseudo-foreground covers less than this
    empty_background: float = 0.95  # ... and confident background at least this much (a busy frame's
                                    # vehicles are mostly ignored pixels, not foreground)
    min_agreement: float = 0.6      # below this base agreement the pseudo-labels are too poor to judge by
    min_gain: float = 0.01          # agreement F the adapted model must add
    flicker_margin: float = 0.10    # relative flicker increase tolerated
    flicker_floor: float = 1e-4     # ... plus this absolute share (one pixel in 10,000 is no flicker)
    budget_s: float | None = None   # wall-clock budget; None = 2 s per second of footage, at least 60 s


# --- footage ----------------------------------------------------------------------------
def read_footage(uri: str, minutes: float, scale: float, fps_default: float = 25.0,
                 progress: bool = True, stabilize: str = "off") -> tuple[np.ndarray, float, int]:
    """(N, h, w) uint8 grey frames at the working size, the frame rate assumed, and how many frames
    were moved by camera-motion compensation.

    ``stabilize: auto`` registers each frame as the stage does (pipeline.stabilize, on a grey copy up
    to EST_WIDTH wide) and warps it into its epoch's reference frame (edges replicated), so that the
    median, MOG2, the windows and the self-check all see the camera held still, as the stage's
    network does; frames whose registration is unreliable are kept as seen."""
    frames, fps, moved = [], fps_default, 0
    registrations = Registrations() if stabilize_mode(stabilize) == "auto" else None
    limit_s = minutes * 60
    with open_source(uri) as source:
        fps = float(getattr(source, "fps", None) or fps_default)
        bar = tqdm(desc="reading", unit="frame", disable=not progress, leave=False)
        for frame in source:
            t = frame.pts if frame.pts is not None else (frame.index - 1) / fps
            if t >= limit_s:
                break
            h, w = frame.image.shape[:2]
            small = grey_small(frame.image, working_size(w, h, scale))
            if frames and small.shape != frames[0].shape:
                raise SourceError(mask_credentials(uri), "the resolution changed inside the footage; adapt "
                                                         "needs one camera view")
            if registrations is not None:
                grey = registration_grey(frame.image, small)
                pose = registrations.update("footage", grey).pose_at(small.shape[1] / grey.shape[1])
                back = None if pose is None else np.linalg.inv(pose)   # this frame's pixels -> the reference's
                if back is not None and displacement(back, small.shape[::-1]) > DEAD_BAND:
                    small = cv2.warpAffine(small, back[:2], small.shape[::-1], flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE)
                    moved += 1
            frames.append(small)
            bar.update()
        bar.close()
    return (np.stack(frames) if frames else np.empty((0, 1, 1), np.uint8)), fps, moved


# --- pseudo-labels -------------------------------------------------------------------------
def window_of(grey: np.ndarray, t: int, frames: int, stride: int) -> np.ndarray:
    """(T, h, w) float32 in [0, 1]: the stage's window ending at frame t (clamped at the start)."""
    idx = np.maximum(t - (frames - 1 - np.arange(frames)) * stride, 0)
    return grey[idx].astype(np.float32) / 255


@torch.no_grad()
def predict(model: MSFgNet, grey: np.ndarray, numbers: np.ndarray, stride: int, batch: int = 16) -> np.ndarray:
    """(len(numbers), h, w) float32 probabilities at the working size."""
    model.eval()
    out = []
    for i in range(0, len(numbers), batch):
        x = np.stack([window_of(grey, int(t), model.spec.frames, stride) for t in numbers[i:i + batch]])
        out.append(model(torch.from_numpy(x)).numpy()[:, 0])
    return np.concatenate(out) if out else np.empty((0, *grey.shape[1:]), np.float32)


def mog2_votes(grey: np.ndarray, numbers: set[int]) -> dict[int, np.ndarray]:
    """MOG2 (OpenCV, default history) over every frame in order; its 0/255 mask at ``numbers``."""
    mog = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
    out = {}
    for t in range(len(grey)):
        mask = mog.apply(grey[t])
        if t in numbers:
            out[t] = mask
    return out


def median_votes(grey: np.ndarray, t: int, s: AdaptSettings) -> tuple[np.ndarray, np.ndarray]:
    """(foreground vote, background vote) from the long-window median background around frame t."""
    half = s.median_frames // 2
    idx = np.clip(t + (np.arange(s.median_frames) - half) * s.median_step, 0, len(grey) - 1)
    background = np.median(grey[idx], axis=0)
    diff = np.abs(grey[t].astype(np.float32) - background)
    noise = max(s.min_noise, 1.4826 * float(np.median(diff)))   # MAD of the difference ~ sensor noise
    return diff > s.diff_high * noise, diff < s.diff_low * noise


def pseudo_labels(grey: np.ndarray, numbers: np.ndarray, model_prob: np.ndarray | None, mog: dict[int, np.ndarray],
                  s: AdaptSettings) -> np.ndarray:
    """(len(numbers), h, w) uint8 labels: 255 all agree moving, 0 all agree static, 170 otherwise.

    ``model_prob`` None leaves the model's vote out: the held-back labels that judge
    the models must not contain either model's opinion (the base would agree with
    itself by construction).
    """
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * s.ring + 1, 2 * s.ring + 1))
    out = np.empty((len(numbers), *grey.shape[1:]), np.uint8)
    for k, t in enumerate(numbers):
        med_fg, med_bg = median_votes(grey, int(t), s)
        mog_fg = mog[int(t)] > 127
        fg, bg = med_fg & mog_fg, med_bg & ~mog_fg
        if model_prob is not None:
            fg &= model_prob[k] > s.model_high
            bg &= model_prob[k] < s.model_low
        label = np.full(fg.shape, IGNORE, np.uint8)
        label[bg] = BG
        if s.ring and fg.any():
            near = cv2.dilate(fg.view(np.uint8), ring).astype(bool)
            label[near & bg] = IGNORE
        label[fg] = FG
        out[k] = label
    return out


def split_numbers(count: int, s: AdaptSettings, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers that train (spread over the first part) and the held-back ones (every frame)."""
    cut = int(round(count * (1 - s.held_back)))
    if cut - first < 8 or count - cut < 8:
        raise ConfigError("--minutes", f"{count} frames are too few to adapt and check (need the window of "
                                       f"{first} frames plus 8 to train and 8 to hold back)")
    train = np.arange(first, cut)
    if len(train) > s.labelled:
        train = np.linspace(first, cut - 1, s.labelled).round().astype(int)
    return train, np.arange(cut, count)


# --- fine-tuning ---------------------------------------------------------------------------
def sample_batch(rng: np.random.Generator, grey: np.ndarray, numbers: np.ndarray, labels: np.ndarray,
                 stride: int, frames: int, s: AdaptSettings):
    h, w = grey.shape[1:]
    c = min(s.crop, h, w) // 4 * 4
    xs, ys, ws = [], [], []
    for _ in range(s.batch):
        k = int(rng.integers(len(numbers)))
        y0, x0 = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        win = window_of(grey, int(numbers[k]), frames, stride)[:, y0:y0 + c, x0:x0 + c]
        lab = labels[k, y0:y0 + c, x0:x0 + c]
        if rng.random() < 0.5:
            win, lab = win[:, :, ::-1], lab[:, ::-1]
        xs.append(win)
        ys.append(lab == FG)
        ws.append(lab != IGNORE)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a), dtype=np.float32))  # noqa: E731
    return as_tensor(xs), as_tensor(ys)[:, None], as_tensor(ws)[:, None]


def fine_tune(model: MSFgNet, grey, numbers, labels, stride: int, s: AdaptSettings, state_path: Path,
              deadline: float, seed: int, resume: bool, progress: bool) -> dict:
    """Fine-tune in place; checkpoints to ``state_path``; returns what happened."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    start = 0
    if resume and state_path.is_file():
        state = load_checkpoint(state_path)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start = int(state["iteration"])
    losses = []
    bar = tqdm(range(start, s.iterations), desc="adapting", initial=start, total=s.iterations,
               disable=not progress, leave=False)
    done = start
    for it in bar:
        if time.monotonic() > deadline:
            break
        rng = np.random.default_rng([seed, it])  # per iteration: a resumed run draws the same batches
        x, y, wt = sample_batch(rng, grey, numbers, labels, stride, model.spec.frames, s)
        model.train()
        loss = foreground_loss(model.logits(x), y, wt)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        done = it + 1
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if done % 25 == 0 or done == s.iterations:
            save_checkpoint(state_path, model=model.state_dict(), optimiser=optimiser.state_dict(), iteration=done)
    bar.close()
    save_checkpoint(state_path, model=model.state_dict(), optimiser=optimiser.state_dict(), iteration=done)
    return {"iterations": done, "resumed_at": start, "loss_last_20": float(np.mean(losses[-20:])) if losses else None}


# --- self-check ------------------------------------------------------------------------------
def self_check(prob: np.ndarray, labels: np.ndarray, threshold: float, s: AdaptSettings) -> dict[str, float]:
    """Agreement, false positives on empty frames and flicker of one model on the held-back frames."""
    masks = prob > threshold
    conf = Confusion()
    for m, lab in zip(masks, labels):
        conf.add(m.view(np.uint8) * np.uint8(255), lab)
    agreement = conf.metrics()["F-measure"]
    empty = [(lab == FG).mean() < s.empty_fraction and (lab == BG).mean() >= s.empty_background for lab in labels]
    fp_empty = float(np.mean([m.mean() for m, e in zip(masks, empty) if e])) if any(empty) else float("nan")
    changed, background = 0, 0
    for k in range(1, len(masks)):
        static = (labels[k] == BG) & (labels[k - 1] == BG)
        changed += int((masks[k] ^ masks[k - 1])[static].sum())
        background += int(static.sum())
    return {"agreement_F": agreement, "fp_rate_empty_frames": fp_empty, "empty_frames": int(sum(empty)),
            "flicker": changed / background if background else float("nan")}


def adapted_is_better(base: dict, adapted: dict, s: AdaptSettings) -> tuple[bool, str]:
    """Protocol rule 3 of docs/models.md."""
    if not base["agreement_F"] >= s.min_agreement:
        return False, (f"the base model agrees with the held-back pseudo-labels only {base['agreement_F']:.4f} "
                       f"(below {s.min_agreement}): too poor to judge an adapted model by")
    if not adapted["agreement_F"] >= base["agreement_F"] + s.min_gain:
        return False, f"agreement F {adapted['agreement_F']:.4f} is not {s.min_gain} above the base's {base['agreement_F']:.4f}"
    if not np.isnan(base["fp_rate_empty_frames"]) and adapted["fp_rate_empty_frames"] > base["fp_rate_empty_frames"]:
        return False, (f"false-positive rate on empty frames {adapted['fp_rate_empty_frames']:.5f} is above "
                       f"the base's {base['fp_rate_empty_frames']:.5f}")
    if not np.isnan(base["flicker"]) and adapted["flicker"] > base["flicker"] * (1 + s.flicker_margin) + s.flicker_floor:
        return False, (f"flicker {adapted['flicker']:.5f} is more than {s.flicker_margin:.0%} (+{s.flicker_floor:g}) "
                       f"above the base's {base['flicker']:.5f}")
    return True, "better on agreement, no more false positives on empty frames, no more flicker"


# --- base model and output -----------------------------------------------------------------
def load_base(weights: str) -> tuple[MSFgNet, dict]:
    """The base model's state_dict, hash-checked against its manifest (shipped files or an adapt folder).

    ``weights`` is what the stage's ``weights`` names: an ONNX graph (its state_dict
    ``.pt`` lies beside it, as in ``weights/``) or a folder written by this command.
    """
    from engines import weights as manifests
    from pipeline.errors import WeightsError

    onnx, pt, manifest = MsfgnetStage(MsfgnetStage.Config(weights=str(weights))).weight_files()
    if not resolve_path(weights).is_dir():
        pt = onnx.with_suffix(".pt")
    try:
        path = manifests.verified_path(pt, manifest)
    except manifests.WeightsError as e:
        raise WeightsError(e.input, e.cause) from None
    entry = manifests.load_manifest(manifest)["files"][path.name]
    model = MSFgNet(MsfgnetSpec(**entry.get("spec", {})))
    model.load_state_dict(load_checkpoint(path))
    return model.eval(), {"file": str(path), "sha256": entry["sha256"]}


def write_output(model: MSFgNet, out: Path, meta: dict) -> None:
    """state_dict + ONNX graph, then their manifest (written last: a crash leaves nothing selectable)."""
    from training.train_msfgnet import export_onnx

    manifest = out / "manifest.json"
    manifest.unlink(missing_ok=True)
    pt, onnx = out / "msfgnet.pt", out / "msfgnet.onnx"
    save_checkpoint(pt, **model.state_dict())
    tmp = out / "msfgnet.onnx.tmp"
    export_onnx(model, tmp)
    tmp.replace(onnx)
    tmp_manifest = out / "manifest.json.tmp"
    tmp_manifest.unlink(missing_ok=True)
    for path, fmt in ((pt, "state_dict"), (onnx, "onnx")):
        record(path, tmp_manifest, model="msfgnet", format=fmt, spec=model.spec.to_dict(), **meta)
    tmp_manifest.replace(manifest)


def main(args) -> int:
    s = AdaptSettings(**{k: v for k, v in {"iterations": getattr(args, "iterations", None),
                                           "budget_s": getattr(args, "budget_s", None)}.items() if v is not None})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(str(out), "--out must be a folder")
    work = out / ".adapt"
    progress = not getattr(args, "no_progress", False)
    threads = int(getattr(args, "threads", 2) or 2)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    stage = MsfgnetStage.Config()
    started = time.monotonic()
    base_weights = getattr(args, "base", None) or stage.weights
    base, base_info = load_base(base_weights)
    model = MSFgNet(base.spec)
    model.load_state_dict(base.state_dict())
    frames_needed = (base.spec.frames - 1) * stride_of(stage) + 1

    cache = work / "pseudo.npz"
    uri_shown = mask_credentials(str(args.input))
    if getattr(args, "resume", False) and cache.is_file():
        data = np.load(cache)
        grey, train_n, train_l, check_n, check_l = (data[k] for k in ("grey", "train_n", "train_l", "check_n", "check_l"))
        fps, moved = float(data["fps"]), int(data["moved"]) if "moved" in data else 0
        print(f"resumed: {len(grey)} frames and their pseudo-labels from {cache}", file=sys.stderr)
    else:
        grey, fps, moved = read_footage(str(args.input), float(args.minutes), stage.scale, progress=progress,
                                        stabilize=stage.stabilize)
        if len(grey) == 0:
            raise SourceError(uri_shown, "no frames read")
        train_n, check_n = split_numbers(len(grey), s, frames_needed)
        mog = mog2_votes(grey, set(int(n) for n in np.concatenate([train_n, check_n])))
        train_l = pseudo_labels(grey, train_n, predict(base, grey, train_n, stride_of(stage)), mog, s)
        check_l = pseudo_labels(grey, check_n, None, mog, s)   # judges both models: neither votes
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / "pseudo.tmp.npz"
        np.savez(tmp, grey=grey, train_n=train_n, train_l=train_l, check_n=check_n, check_l=check_l, fps=fps,
                 moved=moved)
        tmp.replace(cache)
    budget = s.budget_s if s.budget_s is not None else max(60.0, 2.0 * len(grey) / fps)
    deadline = started + budget * 0.85   # leave time for the check and the export
    trained = fine_tune(model, grey, train_n, train_l, stride_of(stage), s, work / "state.pt", deadline,
                        seed=int(getattr(args, "seed", 0) or 0), resume=getattr(args, "resume", False),
                        progress=progress)

    base_check = self_check(predict(base, grey, check_n, stride_of(stage)), check_l, stage.threshold, s)
    adapted_check = self_check(predict(model, grey, check_n, stride_of(stage)), check_l, stage.threshold, s)
    keep, why = adapted_is_better(base_check, adapted_check, s)
    if trained["iterations"] == trained["resumed_at"] == 0:
        keep, why = False, "the time budget ran out before fine-tuning started (raise --budget-s)"
    chosen = model if keep else base
    report = {
        "input": uri_shown, "frames": int(len(grey)), "fps": fps, "working_size": list(grey.shape[:0:-1]),
        "stabilize": stabilize_mode(stage.stabilize), "frames_moved_by_compensation": moved,
        "trained_frames": int(len(train_n)), "held_back_frames": int(len(check_n)),
        "pseudo_label_share": {"foreground": float((train_l == FG).mean()), "background": float((train_l == BG).mean()),
                               "ignored": float((train_l == IGNORE).mean())},
        "base": base_info, "fine_tuning": trained, "check_base": base_check, "check_adapted": adapted_check,
        "kept": "adapted" if keep else "base", "why": why, "settings": asdict(s),
        "seconds": round(time.monotonic() - started, 1),
    }
    meta = {"command": "hazeflow adapt " + " ".join(mask_credentials(a) for a in sys.argv[2:]),
            "data": f"{uri_shown}: {len(grey)} frames, no labels (pseudo-labels: median background, MOG2, base model)",
            "base": base_info, "kept": report["kept"], "metrics": {"held_back_" + k: v for k, v in
                                                                  (adapted_check if keep else base_check).items()}}
    write_output(chosen, out, meta)
    (out / "adapt.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"kept the {report['kept']} model ({why}); agreement F base {base_check['agreement_F']:.4f} "
          f"adapted {adapted_check['agreement_F']:.4f}; wrote {out}/msfgnet.onnx, msfgnet.pt, manifest.json "
          f"({report['seconds']:.0f} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def stride_of(stage: MsfgnetStage.Config) -> int:
    return int(stage.stride)
