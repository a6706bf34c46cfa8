"""Frame sources: video files, image folders, synthetic scenes, live RTSP.

``open_source(uri)`` picks the source class from the URI:

* ``rtsp://[user:pass@]host:port/path`` -> :class:`~pipeline.sources.rtsp.RtspSource`
* ``synthetic:traffic?size=640x360&frames=300&haze=0.5&seed=1`` -> :class:`~pipeline.sources.synthetic.SyntheticSource`
* an existing directory -> :class:`~pipeline.sources.folder.FolderSource` (CDnet ``input/`` layout)
* anything else -> :class:`~pipeline.sources.file.FileSource` (whatever FFmpeg reads)

Every source is an iterator of :class:`pipeline.frame.Frame` and a context manager.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from pipeline.errors import ConfigError, SourceNotFoundError
from pipeline.sources.base import RESET_RECONNECT, RESET_RESOLUTION, Source, mask_credentials, safe_stream_name

__all__ = ["open_source", "Source", "mask_credentials", "safe_stream_name", "RESET_RECONNECT", "RESET_RESOLUTION"]

_LIVE_SCHEMES = ("rtsp://", "rtsps://")


def open_source(uri: str | Path, name: str | None = None, **opts) -> Source:
    """Open the source a URI names; ``opts`` go to the source class (e.g. RTSP timeouts).

    Raises SourceNotFoundError when a path does not exist, SourceError when the
    input cannot be opened or a parameter is invalid.
    """
    text = str(uri)
    lowered = text.lower()
    if lowered.startswith(_LIVE_SCHEMES):
        from pipeline.sources.rtsp import RtspSource

        return _construct(RtspSource, text, name, opts)
    if lowered.startswith("synthetic:"):
        from pipeline.sources.synthetic import SyntheticSource

        return _construct(SyntheticSource, text, name, opts)
    path = Path(text)
    if path.is_dir():
        from pipeline.sources.folder import FolderSource

        return _construct(FolderSource, path, name, opts)
    if not path.exists():
        raise SourceNotFoundError(text, "no such file or directory")
    from pipeline.sources.file import FileSource

    return _construct(FileSource, path, name, opts)


def source_options(cls: type[Source]) -> list[str]:
    """Keyword options a source class accepts besides ``uri`` and ``name``."""
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "uri", "name")]


def _construct(cls: type[Source], uri, name: str | None, opts: dict) -> Source:
    unknown = sorted(set(opts) - set(source_options(cls)))
    if unknown:
        raise ConfigError(mask_credentials(str(uri)), f"unknown source option(s) {', '.join(unknown)} for {cls.__name__} "
                          f"(valid: {', '.join(source_options(cls)) or 'none'})")
    return cls(uri, name, **opts)
