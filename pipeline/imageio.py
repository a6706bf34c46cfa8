"""One rule for turning whatever a decoder or OpenCV returns into HxWx3 uint8 BGR.

Used by the dehaze stage, ``hazeflow eval dehaze`` and the RI-GAN data loader so
that an odd picture is converted the same way everywhere, or refused with one
line naming it. Conversions: grey (HxW or HxWx1) is repeated over 3 channels;
BGRA drops alpha (no compositing); 16-bit is scaled by 255/65535; float is taken
as [0, 1] and clipped. Anything else raises ``error(where, cause)``.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import PipelineError, SourceError


def to_bgr8(image, where: str, *, min_side: int = 1,
            error: type[PipelineError] = SourceError) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise error(where, "not a readable image (no pixel data)")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) * np.float32(255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise error(where, f"unsupported pixel type {image.dtype} (8-bit, 16-bit or float images only)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif not (image.ndim == 3 and image.shape[2] == 3):
        raise error(where, f"unsupported image shape {image.shape}")
    if min(image.shape[:2]) < min_side:
        raise error(where, f"image is {image.shape[1]}x{image.shape[0]}, smaller than {min_side} px")
    return np.ascontiguousarray(image)
