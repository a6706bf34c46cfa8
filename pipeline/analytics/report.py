"""``hazeflow report OUTPUT_DIR``: one self-contained HTML page for a run.

Reads what the run left per stream (summary.json, analytics.csv, events.jsonl, preview.mp4, or
their closed segments under analytics/, events/ and preview/) and writes ``OUTPUT_DIR/report.html``: the analytics table exactly as in analytics.csv, plots
(counts per bin per line and direction, zone occupancy, the speed histogram, the haze score
with dehazing on/off over time, per-stage latency, frames/s and drops) embedded as PNG, and a
strip of sample frames from the preview with boxes. Nothing is fetched from the network.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from pipeline.errors import SourceError, SourceNotFoundError
from pipeline.sinks.atomic import write_bytes_atomic

FILENAME = "report.html"
_STRIP_FRAMES = 6

_CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.plots img{max-width:560px;margin:4px}.strip img{width:240px;margin:2px}
.kv td{text-align:left}
"""


def stream_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/summary.json"))


def output_files(folder: Path, name: str, kind: str, suffix: str) -> list[Path]:
    """``folder/name`` for a run in one file, else its closed segments ``folder/kind/<stem><suffix>``
    in time order (segment names are UTC times); a segment still open (``.open``) is left out."""
    if (folder / name).is_file():
        return [folder / name]
    if not (folder / kind).is_dir():
        return []
    return sorted(p for p in (folder / kind).glob(f"*{suffix}") if ".open" not in p.name)


def read_csv(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            rows.extend(csv.DictReader(f))
    return rows


def read_events(paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width=7.0, height=3.0):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def plot_counts(rows: list[dict]) -> str | None:
    lines = [r for r in rows if r["kind"] == "line"]
    if not lines:
        return None
    fig, ax = _figure()
    keys = sorted({(r["name"], r["direction"]) for r in lines})
    starts = sorted({float(r["bin_start_s"]) for r in lines})
    width = 0.8 / len(keys)
    for i, (name, direction) in enumerate(keys):
        counts = {float(r["bin_start_s"]): int(r["count"]) for r in lines if (r["name"], r["direction"]) == (name, direction)}
        ax.bar(np.arange(len(starts)) + i * width, [counts.get(s, 0) for s in starts], width, label=f"{name} {direction}")
    ax.set_xticks(np.arange(len(starts)) + 0.4 - width / 2, [f"{s:g}" for s in starts])
    ax.set_xlabel("bin start (s)")
    ax.set_ylabel("vehicles")
    ax.set_title("Counts per bin, line and direction")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_occupancy(rows: list[dict]) -> str | None:
    zones = [r for r in rows if r["kind"] == "zone"]
    if not zones:
        return None
    fig, ax = _figure()
    for name in sorted({r["name"] for r in zones}):
        pts = sorted((float(r["bin_start_s"]), float(r["occupancy"])) for r in zones if r["name"] == name)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("bin start (s)")
    ax.set_ylabel("share of frames occupied")
    ax.set_title("Zone occupancy")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_speeds(summary: dict) -> str | None:
    lines = ((summary.get("analytics") or {}).get("lines")) or {}
    series = {}
    for name, entry in lines.items():
        for direction in ("in", "out"):
            hist = entry.get(f"speed_histogram_{direction}") or {}
            if hist:
                series[f"{name} {direction}"] = {float(k): int(v) for k, v in hist.items()}
    if not series:
        return None
    from pipeline.analytics.bins import HISTOGRAM_KMH

    fig, ax = _figure()
    for i, (label, hist) in enumerate(series.items()):
        edges = sorted(hist)
        ax.bar(np.array(edges) + HISTOGRAM_KMH * (0.1 + 0.8 * i / len(series)), [hist[e] for e in edges],
               HISTOGRAM_KMH * 0.8 / len(series), align="edge", label=label)
    ax.set_xlabel("km/h at the line")
    ax.set_ylabel("vehicles")
    ax.set_title(f"Speed of {sum(sum(h.values()) for h in series.values())} counted vehicles")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_haze(events: list[dict]) -> str | None:
    pts = [(e.get("pts") or 0.0, e["haze_score"], bool(e.get("dehaze_applied"))) for e in events if "haze_score" in e]
    if not pts:
        return None
    t = np.array([p[0] for p in pts], np.float64)
    fig, ax = _figure()
    ax.plot(t, [p[1] for p in pts], color="#335", lw=1, label="haze score")
    on = np.array([p[2] for p in pts])
    if on.any():
        ax.fill_between(t, 0, 1, where=on, transform=ax.get_xaxis_transform(), color="#f90", alpha=0.25, step="mid",
                        label="dehazing on")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("haze score")
    ax.set_title("Haze score and dehazing over time")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_latency(summary: dict) -> str | None:
    stages = {k: v for k, v in (summary.get("stages") or {}).items() if v.get("p50_ms") is not None}
    if not stages:
        return None
    fig, ax = _figure()
    names = list(stages)
    x = np.arange(len(names))
    ax.bar(x - 0.2, [stages[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.bar(x + 0.2, [stages[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per frame")
    ax.set_title("Latency per stage")
    ax.legend(fontsize=8)
    return _png(fig)


def sample_strip(preview: Path, count: int = _STRIP_FRAMES) -> list[str]:
    """``count`` evenly spaced frames of preview.mp4, its right panel (mask, boxes, tracks), as PNG."""
    import av
    import cv2

    frames = []
    try:
        with av.open(str(preview)) as container:
            stream = container.streams.video[0]
            total = stream.frames or 0
            decoded = [f.to_ndarray(format="bgr24") for f in container.decode(stream)] if not total else None
            if decoded is None:
                wanted = set(np.linspace(0, total - 1, count).round().astype(int).tolist())
                container.seek(0)
                decoded = [f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(stream)) if i in wanted]
            else:
                pick = np.linspace(0, len(decoded) - 1, count).round().astype(int)
                decoded = [decoded[i] for i in sorted(set(pick.tolist()))]
    except av.error.FFmpegError as e:
        raise SourceError(str(preview), f"cannot decode: {e}") from None
    for image in decoded:
        w = image.shape[1] // 3
        panel = image[:, 2 * w:] if w else image
        ok, png = cv2.imencode(".png", panel)
        if ok:
            frames.append("data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii"))
    return frames


def _table(rows: list[dict], columns) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f'<table class="analytics"><tr>{head}</tr>{body}</table>'


def stream_section(folder: Path) -> str:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    rows = read_csv(output_files(folder, "analytics.csv", "analytics", ".csv"))
    events = read_events(output_files(folder, "events.jsonl", "events", ".jsonl"))
    name = html.escape(str(summary.get("stream", folder.name)))
    frames = summary.get("frames", {})
    latency = (summary.get("latency") or {}).get("end_to_end") or {}
    drops = frames.get("dropped_by_reason") or {}
    facts = [("input", summary.get("input")), ("frames in / processed / dropped",
             f"{frames.get('in')} / {frames.get('processed')} / {frames.get('dropped')}"),
             ("dropped by reason", ", ".join(f"{k}: {v}" for k, v in drops.items()) or "none"),
             ("frames/s", summary.get("fps")),
             ("latency p50 / p99 (ms)", f"{latency.get('p50_ms')} / {latency.get('p99_ms')}")]
    parts = [f"<h2>Stream {name}</h2>", '<table class="kv">']
    parts += [f"<tr><th class='l'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts]
    parts.append("</table>")
    if rows:
        from pipeline.analytics.bins import COLUMNS

        parts.append("<h3>analytics.csv</h3>" + _table(rows, COLUMNS))
    else:
        parts.append("<p>No analytics.csv (the run had no analytics stage).</p>")
    plots = [p for p in (plot_counts(rows), plot_occupancy(rows), plot_speeds(summary), plot_haze(events),
                         plot_latency(summary)) if p]
    if plots:
        parts.append('<div class="plots">' + "".join(f'<img alt="plot" src="{p}">' for p in plots) + "</div>")
    previews = output_files(folder, "preview.mp4", "preview", ".mp4")
    strip = sample_strip(previews[-1]) if previews else []  # segments: the newest closed one
    if strip:
        parts.append('<h3>Sample frames</h3><div class="strip">'
                     + "".join(f'<img alt="frame" src="{s}">' for s in strip) + "</div>")
    return "\n".join(parts)


def build_report(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SourceNotFoundError(str(root), "no such output folder")
    folders = stream_folders(root)
    if not folders:
        raise SourceError(str(root), "not a hazeflow output folder (no <stream>/summary.json below it)")
    sections = [stream_section(f) for f in folders]
    title = f"hazeflow report: {html.escape(root.name)}"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body><h1>{title}</h1>" + "\n".join(sections) + "</body></html>")
    out = root / FILENAME
    write_bytes_atomic(out, page.encode("utf-8"))
    return out
