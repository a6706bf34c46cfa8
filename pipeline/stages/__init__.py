"""Stage registry: every name a config can use, in one place.

Entries are ``"module:Class"`` strings imported on first use, so that a config
using only classical stages never imports ONNX Runtime or a model.
"""
from __future__ import annotations

import importlib

from pipeline.errors import ConfigError

REGISTRY: dict[str, str] = {
    "dcp": "pipeline.stages.dcp:DcpStage",                  # dark-channel-prior dehazing (He et al. 2009)
    "dehaze": "pipeline.stages.dehaze:DehazeStage",         # RI-GAN gated by the haze score
    "mog2": "pipeline.stages.background:Mog2Stage",         # OpenCV MOG2 foreground
    "knn": "pipeline.stages.background:KnnStage",           # OpenCV KNN foreground
    "msfgnet": "pipeline.stages.msfgnet:MsfgnetStage",      # learned foreground (Patil & Murala 2018)
    "blobs": "pipeline.stages.blobs:BlobStage",             # connected components -> boxes, tracks, counts
    "analytics": "pipeline.stages.analytics:AnalyticsStage",  # counting lines, zones, speed per track
}


def stage_class(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"stages.{name}", f"unknown stage; valid stages: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
