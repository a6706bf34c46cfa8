"""Inputs of MSFgNet's learned edge (``msfgnet: {refine: learned}``; training.models.refine).

One definition for the stage and for the training data (training.train_refine), so the head
always sees at run time what it was trained on. numpy/OpenCV only.

Per pixel of a rectangle of the frame, at the input's full size (FEATURES, in order):

* ``prob``: MSFgNet's probability, upsampled bilinearly from the working size;
* ``guided``: the same after the guided filter (pipeline.stages.msfgnet.refine_guided), clipped
  to [0, 1];
* ``blue``, ``green``, ``red``: the frame's colour in [0, 1];
* ``change_near``, ``change_far``: |current - past| of the network's own window (working size,
  camera motion already compensated), against the frame ``stride`` back and the oldest frame of
  the window, upsampled bilinearly.
"""
from __future__ import annotations

import cv2
import numpy as np

FEATURES = ("prob", "guided", "blue", "green", "red", "change_near", "change_far")


def change_maps(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(near, far) float32 at the working size from the network input ``window`` (T, h, w) in [0, 1],
    current frame last: |current - previous| and |current - oldest|."""
    current = window[-1]
    return cv2.absdiff(current, window[-2]), cv2.absdiff(current, window[0])


def refine_inputs(prob: np.ndarray, guided: np.ndarray, image: np.ndarray, changes: tuple[np.ndarray, np.ndarray],
                  rect: tuple[int, int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """(1, len(FEATURES), h, w) float32 for the rectangle ``rect`` = (x0, y0, x1, y1) of the frame.

    ``prob``, ``guided``: HxW float32 at the frame's size; ``image``: HxWx3 BGR uint8 (a grey HxW
    frame is used for all three channels); ``changes``: change_maps at the working size."""
    x0, y0, x1, y1 = rect
    h, w = y1 - y0, x1 - x0
    H, W = prob.shape
    if out is None or out.shape != (1, len(FEATURES), h, w):
        out = np.empty((1, len(FEATURES), h, w), np.float32)
    x = out[0]
    x[0] = prob[y0:y1, x0:x1]
    np.clip(guided[y0:y1, x0:x1], 0.0, 1.0, out=x[1])
    crop = image[y0:y1, x0:x1]
    if crop.ndim == 2:
        crop = crop[..., None]
    for c in range(3):
        np.multiply(crop[..., min(c, crop.shape[2] - 1)], np.float32(1 / 255), out=x[2 + c], dtype=np.float32)
    for k, change in enumerate(changes):
        full = change if change.shape == (H, W) else cv2.resize(change, (W, H), interpolation=cv2.INTER_LINEAR)
        x[5 + k] = full[y0:y1, x0:x1]
    return out


def refine_inputs_torch(prob, guided, image, window):
    """refine_inputs for the whole frame, in torch on the tensors' device (the stage's device path).

    ``prob``, ``guided``: (1, 1, H, W) float32; ``image``: HxWx3 uint8 BGR (or HxW grey) on the same
    device; ``window``: the network input (T, h, w) float32 in [0, 1]. Returns (1, len(FEATURES), H, W)."""
    import torch

    from pipeline.guided_torch import resize_linear

    H, W = prob.shape[-2:]
    colour = image.permute(2, 0, 1) if image.dim() == 3 else image[None].expand(3, H, W)
    changes = torch.stack([(window[-1] - window[-2]).abs(), (window[-1] - window[0]).abs()])[None]
    return torch.cat([prob, guided.clamp(0.0, 1.0), colour[None].to(torch.float32).mul_(1.0 / 255.0),
                      resize_linear(changes, (H, W))], dim=1)
