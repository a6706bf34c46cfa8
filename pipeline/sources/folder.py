"""Image folders in the CDnet layout (``<sequence>/input/inNNNNNN.jpg``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pipeline.errors import SourceError, SourceNotFoundError
from pipeline.frame import Frame
from pipeline.sources.base import Source, safe_stream_name

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def image_folder(folder: str | Path) -> Path:
    """The folder holding the images: ``folder/input`` when that exists (a CDnet sequence), else ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceNotFoundError(str(folder), "no such directory")
    sub = folder / "input"
    return sub if sub.is_dir() else folder


def list_images(folder: str | Path) -> list[tuple[int, Path]]:
    """Images of a sequence as ``(index, path)`` sorted by index.

    Accepts the CDnet sequence folder or its ``input/`` subfolder. The index is
    the number ending the file stem (``in001460.jpg`` -> 1460) when every image
    has one and they are all different; otherwise images are numbered 1, 2, ...
    in name order.
    """
    files = sorted(p for p in image_folder(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    numbers = [_TRAILING_NUMBER.search(p.stem) for p in files]
    if files and all(numbers):
        indexed = [(int(m.group(1)), p) for m, p in zip(numbers, files)]
        if len({i for i, _ in indexed}) == len(indexed):
            return sorted(indexed, key=lambda item: item[0])
    return [(i, p) for i, p in enumerate(files, start=1)]


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 BGR; SourceError naming the file when it cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # works for non-ASCII paths, unlike cv2.imread
    except OSError as e:
        raise SourceError(str(path), f"cannot read image ({e.strerror or e})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SourceError(str(path), "cannot decode image (corrupt or not an image)")
    return image


class FolderSource(Source):
    """Frames from an image folder; ``Frame.index`` is the number in the file name.

    ``fps`` (optional) gives ``pts = (index - first_index) / fps``; without it pts is None.
    """

    def __init__(self, uri: str | Path, name: str | None = None, fps: float | None = None):
        self.folder = Path(uri)
        self.images = list_images(self.folder)  # raises SourceNotFoundError
        if not self.images:
            raise SourceError(str(self.folder), f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        if fps is not None and fps <= 0:
            raise SourceError(str(self.folder), f"fps must be > 0, got {fps}")
        self.fps = fps
        super().__init__(str(uri), name)

    def default_name(self) -> str:
        folder = self.folder.resolve()
        # CDnet: .../highway/input -> "highway"
        return safe_stream_name(folder.parent.name if folder.name == "input" else folder.name)

    def __len__(self) -> int:
        return len(self.images)

    def _generate(self) -> Iterator[Frame]:
        first = self.images[0][0]
        for index, path in self.images:
            pts = (index - first) / self.fps if self.fps else None
            yield Frame(self.name, index, pts, read_image(path))
