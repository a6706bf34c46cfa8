"""The one image conversion rule shared by the dehaze stage, eval and the RI-GAN loader."""
import numpy as np
import pytest

from pipeline.errors import SourceError, StageError
from pipeline.imageio import to_bgr8


def test_conversions():
    assert to_bgr8(np.full((4, 5), 7, np.uint8), "g").shape == (4, 5, 3)
    assert to_bgr8(np.full((4, 5, 1), 7, np.uint8), "g1")[0, 0].tolist() == [7, 7, 7]
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 200
    assert to_bgr8(bgra, "a")[0, 0].tolist() == [0, 0, 200]
    deep = to_bgr8(np.array([[[0, 257, 65535]]], np.uint16), "d")
    assert deep.dtype == np.uint8 and deep[0, 0].tolist() == [0, 1, 255]
    assert to_bgr8(np.full((2, 2, 3), 0.5, np.float32), "f")[0, 0].tolist() == [128, 128, 128]


def test_refusals_name_the_input_and_use_the_callers_error():
    with pytest.raises(SourceError, match="unsupported pixel type int32"):
        to_bgr8(np.zeros((4, 4, 3), np.int32), "x.png")
    with pytest.raises(StageError, match="smaller than 4 px") as e:
        to_bgr8(np.zeros((3, 9, 3), np.uint8), "cam#1", min_side=4, error=StageError)
    assert e.value.input == "cam#1"
    with pytest.raises(SourceError, match="unsupported image shape"):
        to_bgr8(np.zeros((4, 4, 2), np.uint8), "two")
