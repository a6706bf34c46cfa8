"""`hazeflow bench` runs the real graph: the run command's stages and sinks, the classical chain
in the same run, the commit and the chain recorded, and a learned stage that cannot load is an error."""
from __future__ import annotations

import json
import subprocess

import pytest

from pipeline.cli import main
from tests.conftest import ROOT

pytest.importorskip("av", reason="PyAV is needed by `hazeflow bench` (it decodes and encodes video)")


def _files(folder):
    return sorted(p.relative_to(folder).parts[0] for p in folder.rglob("*") if p.is_file())


def test_bench_runs_the_run_commands_graph_with_every_output(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n")
    rc = main(["bench", "--resolution", "160x96", "--streams", "2", "--frames", "10",
               "--json", str(out), "--markdown", str(md)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "onnxruntime"} <= set(result["machine"])
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert result["commit"]["commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    (run,) = result["runs"]
    assert run["resolution"] == "160x96" and run["streams"] == 2 and run["backend"] == "auto"
    # the default config's learned chain, each stage with what it resolved to; nothing substituted
    assert [c["stage"] for c in run["chain"]] == ["dehaze", "msfgnet", "blobs", "analytics"]
    # auto on the CPU: ONNX Runtime, or OpenVINO where it is faster and passes parity (engines.load)
    assert run["chain"][0]["method"] == "rigan" and run["chain"][0]["backend"] in ("onnxruntime", "openvino")
    assert run["chain"][1]["precision"] == "fp32"
    e, b = run["end_to_end"], run["baseline"]
    assert e["frames"] == b["frames"] == 20 and e["fps"] > 0 and b["fps"] > 0
    assert 0 < e["p50_ms"] <= e["p99_ms"]
    assert e["stages"] == ["decode", "dehaze", "msfgnet", "blobs", "analytics", "sinks"]
    assert e["dehazed_frames"] == 20  # haze on every frame, dehazed on every frame (when: always)
    assert e["network_runs"] == {"dehaze": 2 * 3}  # per stream: frames 1, 5, 9 (refresh_every 4, one scene)
    assert b["name"] == "decode+dcp+mog2+blobs+analytics+encode" and b["stages"][1:3] == ["dcp", "mog2"]
    assert run["ratio_to_baseline"] == pytest.approx(e["fps"] / b["fps"], rel=1e-2)
    for name in ("decode", "dehaze", "msfgnet", "blobs", "analytics", "sinks"):
        stage = run["stages"][name]
        assert stage["fps"] > 0 and 0 < stage["p50_ms"] <= stage["p99_ms"] and stage["frames"] == 20, (name, stage)
    assert run["outputs"] == ["analytics.csv", "dehazed.mp4", "events.jsonl", "masks", "preview.mp4", "summary.json"]

    # `hazeflow run` with the same config on the same kind of clip leaves the same files
    from pipeline.commands.bench import render_frames, write_clip

    clip = write_clip(tmp_path / "clip.mp4", render_frames(160, 96, 6))
    assert main(["run", "--input", str(clip), "--output", str(tmp_path / "run")]) == 0
    assert sorted(set(_files(tmp_path / "run" / "clip"))) == run["outputs"]

    text = md.read_text()
    assert text.startswith("# Benchmarks\n") and "| **baseline** (decode+dcp+mog2+blobs+analytics+encode) |" in text
    assert "backend auto, precision fp32" in text and f"dehaze (rigan {run['chain'][0]['backend']} fp32" in text


def test_bench_reports_backends_side_by_side(tmp_path):
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "onnxruntime", "--backend", "openvino", "--resolution", "64x48",
                 "--frames", "4", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["backend"] for r in runs] == ["onnxruntime", "openvino"]
    for run in runs:  # each learned stage loaded the backend asked for, and each run has its own baseline
        assert [c["backend"] for c in run["chain"][:2]] == [run["backend"]] * 2
        assert run["end_to_end"]["fps"] > 0 and run["baseline"]["fps"] > 0


def test_bench_fails_when_a_learned_stage_cannot_load(tmp_path, capsys):
    """No silent classical stand-in: missing RI-GAN weights stop the bench with the stage's one line."""
    config = tmp_path / "missing.yaml"
    missing = tmp_path / "absent.onnx"
    config.write_text(f"stages:\n  - dehaze: {{weights: {missing}}}\n  - msfgnet: {{}}\n")
    rc = main(["bench", "--config", str(config), "--resolution", "64x48", "--frames", "4"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert err.startswith(f"hazeflow: error: {missing}") and "not found" in err


def test_bench_rejects_bad_resolution(capsys):
    assert main(["bench", "--resolution", "640by360", "--frames", "4"]) == 2
    assert "hazeflow: error: 640by360: resolution must be WxH" in capsys.readouterr().err
