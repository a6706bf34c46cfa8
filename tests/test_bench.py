"""A tiny real bench run: JSON shape of DESIGN.md, per-stage numbers, the baseline, markdown."""
from __future__ import annotations

import json

from pipeline.cli import main


def test_bench_small_run_writes_design_json_and_markdown(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n")
    rc = main(["bench", "--resolution", "320x240", "--streams", "2", "--frames", "12",
               "--json", str(out), "--markdown", str(md)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "onnxruntime"} <= set(result["machine"])
    (run,) = result["runs"]
    assert run["resolution"] == "320x240" and run["streams"] == 2
    assert {"backend", "precision", "stages", "end_to_end", "baseline"} <= set(run)
    for name in ("decode", "mog2", "dcp", "encode"):
        stage = run["stages"][name]
        assert stage["fps"] > 0 and 0 < stage["p50_ms"] <= stage["p99_ms"], (name, stage)
        assert stage["frames"] == 24
    assert run["baseline"]["name"] == "decode+mog2+dcp+encode" and run["baseline"]["fps"] > 0
    assert run["end_to_end"]["fps"] > 0 and run["end_to_end"]["stages"][0] == "decode"
    for name, why in run["skipped"].items():  # every stage not timed says why
        assert name not in run["stages"] and why
    text = md.read_text()
    assert text.startswith("# Benchmarks\n") and "| **baseline** (decode+mog2+dcp+encode) |" in text
    assert "backend auto, precision fp32" in text


def test_bench_rejects_bad_resolution(capsys):
    assert main(["bench", "--resolution", "640by360", "--frames", "4"]) == 2
    assert "hazeflow: error: 640by360: resolution must be WxH" in capsys.readouterr().err
