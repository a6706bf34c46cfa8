"""tools/soak.py on a short run: rows every N frames with RSS, fds and latency, and the table."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.conftest import ROOT


def classical_config(tmp_path):
    config = tmp_path / "classical.yaml"
    config.write_text("stages: [{dcp: {}}, {mog2: {}}, {blobs: {}}]\n"
                      "outputs: {masks: false, preview: false}\n")
    return config


def test_short_soak_writes_rows_and_a_table(tmp_path):
    config = classical_config(tmp_path)
    out, table = tmp_path / "soak.json", tmp_path / "bench.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--config", str(config), "--frames", "90",
                        "--every", "15", "--fps", "25", "--size", "160x120", "--output", str(tmp_path / "out"),
                        "--json", str(out), "--markdown", str(table)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["frames"]["in"] == 90
    assert result["frames"]["in"] == result["frames"]["processed"] + result["frames"]["dropped"]
    rows = result["rows"]
    assert len(rows) >= 2 and [r["written"] for r in rows] == sorted(r["written"] for r in rows)
    assert all(r["rss_mib"] > 0 and r["fds"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert result["rss_growth_pct_after_warmup"] is not None
    assert "| frames written |" in table.read_text() and str(rows[0]["written"]) in table.read_text()
    # --render prints the same table again from the JSON, the trend recomputed from its rows
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "soak.py"), "--render", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and str(rows[-1]["rss_mib"]) in again.stdout, again.stderr[-2000:]


def test_rss_trend_is_the_least_squares_slope_per_10k_frames():
    sys.path.insert(0, str(ROOT / "tools"))
    from soak import rss_trend

    # +0.5 MiB per 10,000 frames under a +-1.5 MiB swing that starts low and ends high: the end points
    # alone say +7.5 MiB over 90,000 frames (0.83 per 10,000); the slope stays near 0.5
    rows = [{"written": k * 10_000, "rss_mib": 200 + 0.5 * k + (1.5 if k % 2 == 0 else -1.5)} for k in range(1, 11)]
    assert abs(rss_trend(rows) - 0.5) < 0.15 and rows[-1]["rss_mib"] - rows[0]["rss_mib"] == 7.5
    assert rss_trend(rows[:2]) is None


def test_ctrl_c_stops_the_soak_and_still_writes_the_report(tmp_path):
    out, table = tmp_path / "soak.json", tmp_path / "bench.md"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "soak.py"), "--config", str(classical_config(tmp_path)),
                             "--frames", "100000", "--every", "10", "--fps", "25", "--size", "160x120",
                             "--output", str(tmp_path / "out"), "--json", str(out), "--markdown", str(table)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows_seen = [proc.stdout.readline() for _ in range(2)]  # two rows: the camera is running
        assert all(r.startswith("{") for r in rows_seen), rows_seen
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    result = json.loads(out.read_text())
    frames = result["frames"]
    assert result["interrupted"] is True and 20 <= frames["in"] < 100000
    assert frames["in"] == frames["processed"] + frames["dropped"]  # nothing in flight was lost uncounted
    rows = result["rows"]
    assert len(rows) >= 3 and all(r["rss_mib"] > 0 and r["fds"] > 0 for r in rows)
    assert rows[-1]["written"] <= frames["processed"] and result["rss_growth_pct_after_warmup"] is not None
    assert "stopped by a signal" in table.read_text() and "| frames written |" in stdout
