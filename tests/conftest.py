"""Shared fixtures and hardware/data probes. Markers are registered in setup.cfg."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
HIGHWAY = SHARED_DATA / "foreground" / "cdnet2014-highway"
VIDEOS = SHARED_DATA / "videos"
SOTS = SHARED_DATA / "dehazing" / "sots-indoor-dev"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@functools.lru_cache(maxsize=None)
def cuda_probe() -> str | None:
    """None if CUDA works, else the reason it does not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


@functools.lru_cache(maxsize=None)
def tensorrt_probe() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # the registry wheels fail to import here
        return f"tensorrt does not import ({type(e).__name__}: {e})"[:200]
    return None


@functools.lru_cache(maxsize=None)
def rtsp_probe() -> str | None:
    import subprocess

    code = 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer'
    try:
        r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"/usr/bin/python3 unusable for the RTSP server: {e}"
    if r.returncode != 0:
        return "GStreamer RTSP server missing (apt: gir1.2-gst-rtsp-server-1.0 python3-gi; .ci/run installs it)"
    return None


def pytest_collection_modifyitems(config, items):
    probes = {"gpu": cuda_probe, "trt": tensorrt_probe, "rtsp": rtsp_probe}
    for item in items:
        for marker, probe in probes.items():
            if marker in item.keywords:
                reason = probe()
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


def need(path: Path) -> Path:
    """Skip the calling test when a piece of ../shared/data is absent (fresh user clone)."""
    if not path.exists():
        pytest.skip(f"{path} not present (shared data is only on development machines)")
    return path
