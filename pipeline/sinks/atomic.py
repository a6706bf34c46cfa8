"""Write-then-rename, so a final file name only ever holds a complete file.

A writer works on ``.<name>.partial`` in the same folder (same file system, so
``os.replace`` is atomic) and renames it on ``commit``. A process killed
mid-write leaves only the hidden partial file behind, never a half file under
the final name. Paths are checked to stay inside the output folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, fallback: str = "stream") -> str:
    """A stream name usable as one folder name: no separators, no '..', not hidden."""
    cleaned = _UNSAFE.sub("_", str(name)).strip("._") or fallback
    return cleaned[:100]


def inside(root: Path, *parts: str) -> Path:
    """``root / parts`` resolved, refusing anything that would land outside ``root``."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ConfigError("/".join(parts), f"output path escapes the output folder {root}")
    return path


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def commit(partial: Path, final: Path) -> None:
    os.replace(partial, final)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    tmp = partial_path(final)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, final)
