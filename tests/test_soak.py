"""tools/soak.py on a short run: rows every N frames with RSS, fds and latency, and the table."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_short_soak_writes_rows_and_a_table(tmp_path):
    config = tmp_path / "classical.yaml"
    config.write_text("stages: [{dcp: {}}, {mog2: {}}, {blobs: {}}]\n"
                      "outputs: {masks: false, preview: false}\n")
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
