"""Weights manifest: every shipped model file is checked against its sha256 before use."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


class WeightsError(ValueError):
    """Missing, corrupt or mismatched weights; the message names the file."""

    def __init__(self, path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.input = str(path)
        self.cause = cause


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(manifest: str | Path = MANIFEST) -> dict:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise WeightsError(manifest, "weights manifest not found")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(manifest, f"manifest is not valid JSON ({e})") from None


def verified_path(path: str | Path, manifest: str | Path = MANIFEST) -> Path:
    """Return ``path`` if it exists and its sha256 matches the manifest entry.

    The manifest lists files by name relative to the weights folder under
    ``"files": {name: {"sha256": ..., ...}}``. A file not in the manifest, or
    whose hash differs, is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "file not found")
    entries = load_manifest(manifest).get("files", {})
    entry = entries.get(path.name)
    if entry is None:
        raise WeightsError(path, f"not listed in {Path(manifest).name}; refusing unverified weights")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsError(
            path, f"sha256 {actual[:12]}… does not match the manifest's {entry['sha256'][:12]}… (corrupt or replaced file)"
        )
    return path


def record(path: str | Path, manifest: str | Path = MANIFEST, **meta) -> dict:
    """Add or replace the manifest entry of ``path`` (sha256 computed here) with ``meta``.

    Read-modify-write of one key, so entries of other models are kept.
    """
    path = Path(path)
    manifest = Path(manifest)
    data = json.loads(manifest.read_text()) if manifest.is_file() else {"files": {}}
    entry = {"sha256": sha256_of(path), "bytes": path.stat().st_size, **meta}
    data.setdefault("files", {})[path.name] = entry
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(manifest)
    return entry
