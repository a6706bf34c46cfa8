"""``hazeflow batch`` inputs: files, folders, glob patterns and ``.txt`` lists -> work units.

Each input becomes one work unit with a stable output folder name (its stem;
a stem shared by two inputs gets a short hash of the path appended). A name
the manifest already gave an input is kept, so a resumed run writes to the
same folder even when the list of inputs grew.
"""
from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, SourceNotFoundError
from pipeline.sources import mask_credentials, safe_stream_name

#: what a folder given as an input is searched for (recursively)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                  ".flv", ".wmv", ".3gp")
#: a folder without videos but with these is one image-folder input (CDnet ``input/`` layout)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: an input file with this suffix is a list of URIs, one per line
LIST_SUFFIXES = (".txt",)
_GLOB_CHARS = "*?["
_LIVE = ("rtsp://", "rtsps://")


@dataclass(frozen=True)
class WorkUnit:
    """One input and the folder its outputs go to (``DIR/<name>/``)."""

    input: str      # absolute path, or a synthetic: URI
    name: str

    @property
    def masked(self) -> str:
        return mask_credentials(self.input)


def expand_inputs(items: list[str]) -> list[str]:
    """Every input the command line names, in order, each once."""
    out: list[str] = []
    for item in items:
        out.extend(_expand(str(item), from_list=None))
    seen, unique = set(), []
    for uri in out:
        if uri not in seen:
            seen.add(uri)
            unique.append(uri)
    if not unique:
        raise ConfigError("batch", "no inputs")
    return unique


def _expand(item: str, from_list: Path | None) -> list[str]:
    where = f"{item} (listed in {from_list})" if from_list else item
    lowered = item.lower()
    if lowered.startswith(_LIVE):
        raise ConfigError(mask_credentials(where), "live cameras do not end; `hazeflow batch` takes files "
                          "(run live inputs with `hazeflow run configs/rtsp.yaml`)")
    if lowered.startswith("synthetic:"):
        return [item]
    path = Path(item).expanduser()
    if from_list is not None and not path.is_absolute():
        path = from_list.parent / path
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES and from_list is None:
            return _list_file(path)
        return [str(path.resolve())]
    if any(c in item for c in _GLOB_CHARS):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise SourceNotFoundError(where, "the pattern matches no file")
        return [u for m in matches for u in _expand(m, None)]
    raise SourceNotFoundError(where, "no such file or directory")


def _folder(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    videos = [str(p.resolve()) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos:
        return videos
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return [str(path.resolve())]  # one image-folder input
    raise SourceNotFoundError(str(path), "the folder holds no video files (" + " ".join(VIDEO_SUFFIXES[:4])
                              + " ...) and no images")


def _list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"cannot read the list of inputs: {e}") from None
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.extend(_expand(line, from_list=path))
    if not out:
        raise ConfigError(str(path), "the list names no input")
    return out


def name_units(inputs: list[str], known: dict[str, str]) -> list[WorkUnit]:
    """A folder name per input; ``known`` (input -> name, from the manifest) wins."""
    taken = set(known.values())
    units = []
    for uri in inputs:
        name = known.get(uri)
        if name is None:
            name = _base_name(uri)
            if name in taken:
                name = f"{name}-{hashlib.sha1(uri.encode('utf-8')).hexdigest()[:8]}"
            taken.add(name)
        units.append(WorkUnit(uri, name))
    return units


def _base_name(uri: str) -> str:
    if uri.lower().startswith("synthetic:"):
        return safe_stream_name(uri.replace("synthetic:", "synthetic-", 1))
    path = Path(uri)
    if path.is_dir():  # an image folder; CDnet keeps its frames in <sequence>/input/
        return safe_stream_name(path.parent.name if path.name == "input" else path.name)
    return safe_stream_name(path.stem)
