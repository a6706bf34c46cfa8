"""Pieces every training loop needs: device choice, checkpoints, curves, config files.

Kept model-agnostic so the MSFgNet and RI-GAN loops can share it. Checkpoints are
plain dicts of state_dicts, numbers, strings and lists, so they load with
``torch.load(..., weights_only=True)`` (no pickled code is ever executed).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.errors import ConfigError, WeightsError


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda", "no CUDA device is available (torch.cuda.is_available() is False)")
    return torch.device(name)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "expected a mapping of keys at the top level")
    return data


def plain(value):
    """numpy scalars -> Python numbers, recursively: ``weights_only`` loading refuses numpy globals."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: str | Path, **state) -> None:
    """Write atomically (temporary name, then rename): a crash never leaves half a checkpoint.

    Everything but tensors is turned into plain Python first, so the file loads
    with ``torch.load(weights_only=True)`` (an optimiser's learning rate that
    came from numpy would otherwise make it unloadable).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(plain(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(str(path), "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, pickled code refused
        raise WeightsError(str(path), f"cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def interpolate_weights(a: dict, b: dict, alpha: float) -> dict:
    """``(1 - alpha)·a + alpha·b`` for every floating-point tensor of two state_dicts of one model.

    Weight-space interpolation between a model and its own fine-tuned continuation (the
    WiSE-FT idea of Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022):
    part of the new skill at little cost to the old. Integer buffers are taken from ``b``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if a.keys() != b.keys():
        extra = sorted(set(a) ^ set(b))[:3]
        raise ValueError(f"the two state_dicts have different tensors (e.g. {extra})")
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(f"{key}: shape {tuple(ta.shape)} against {tuple(tb.shape)}")
        out[key] = torch.lerp(ta.float(), tb.float(), alpha).to(ta.dtype) if ta.is_floating_point() else tb.clone()
    return out


def load_state_dict(model: torch.nn.Module, path: str | Path, key: str | None = None) -> torch.nn.Module:
    """Load a state_dict file (or ``checkpoint[key]``) into ``model``; shape mismatches name the file."""
    state = load_checkpoint(path)
    if key is not None:
        state = state.get(key, state)
    if not isinstance(state, dict):
        raise WeightsError(str(path), "not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise WeightsError(str(path), f"weights do not fit the model ({first})") from None
    return model


def save_curves(path: str | Path, history: dict[str, list[float]], title: str = "") -> None:
    """One panel per series (e.g. loss, F-measure) against the epoch, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: v for k, v in history.items() if v}
    if not series:
        return
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
