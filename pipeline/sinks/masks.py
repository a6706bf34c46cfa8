"""``masks/binNNNNNN.png``: the 0/255 foreground mask, named after ``frame.index`` (CDnet naming)."""
from __future__ import annotations

from pathlib import Path

import cv2

from pipeline.errors import StageError
from pipeline.frame import Frame
from pipeline.sinks.atomic import write_bytes_atomic

#: PNG compression 1: masks compress well anyway and level 3 (default) costs 2x the time
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def mask_name(index: int) -> str:
    return f"bin{index:06d}.png"


class MaskSink:
    """One PNG per frame that has ``data["mask"]``; each file appears only once complete.

    In a segment (``segment`` set) the PNGs go to ``masks/<segment stem>/``, so
    a restarted run, whose frame numbers start again at 1, never overwrites
    them and retention deletes them with their segment.
    """

    kind = "masks"

    def __init__(self, folder: Path, *, segment=None):
        self.folder = Path(folder) / self.kind if segment is None else segment.final(self.kind)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0

    @property
    def paths(self):
        return [self.folder] if self.written else []

    def write(self, frame: Frame) -> None:
        mask = frame.data.get("mask")
        if mask is None:
            return
        ok, png = cv2.imencode(".png", mask, _PNG)
        if not ok:
            raise StageError(f"{frame.stream}/masks", f"cannot encode mask of frame {frame.index} as PNG")
        write_bytes_atomic(self.folder / mask_name(frame.index), png.tobytes())
        self.written += 1

    def close(self) -> None:
        pass
