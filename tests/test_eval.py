"""`hazeflow eval foreground` and `hazeflow eval dehaze` end to end, through the command line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline.cli import main as cli
from pipeline.commands.eval_dehaze import read_bgr8
from tests.conftest import HIGHWAY, ROOT, SOTS, need

H, W, SIDE = 48, 64, 10


def write_cdnet(root, frames=60, roi="20 60", truth=True):
    """A CDnet-layout sequence: a bright square crossing a textured scene, exact labels."""
    rng = np.random.default_rng(3)
    bg = np.kron(rng.integers(50, 150, (H // 8, W // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    (root / "input").mkdir(parents=True)
    if truth:
        (root / "groundtruth").mkdir()
    for i in range(1, frames + 1):
        image = np.clip(bg + rng.normal(0, 2, bg.shape), 0, 255).astype(np.uint8)
        labels = np.zeros((H, W), np.uint8)
        labels[:4] = 85  # a strip outside the ROI
        if i > 10:
            x = (2 * i) % (W - SIDE)
            image[20:20 + SIDE, x:x + SIDE] = 250
            labels[20:20 + SIDE, x:x + SIDE] = 255
            labels[20:20 + SIDE, x] = 170  # boundary pixels are "unknown"
        cv2.imwrite(str(root / "input" / f"in{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if truth:
            cv2.imwrite(str(root / "groundtruth" / f"gt{i:06d}.png"), labels)
    if roi:
        (root / "temporalROI.txt").write_text(roi + "\n")
    return root


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    base = tmp_path_factory.mktemp("cdnet")
    return write_cdnet(base / "square"), write_cdnet(base / "square2", frames=40, roi="15 40")


METRIC_KEYS = {"Recall", "Specificity", "FPR", "FNR", "PWC", "Precision", "F-measure", "fps"}


@pytest.mark.parametrize("method", ["mog2", "knn"])
def test_eval_foreground_json_per_sequence_and_mean(sequences, tmp_path, capsys, method):
    out = tmp_path / "fg.json"
    assert cli(["eval", "foreground", *map(str, sequences), "--method", method, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sequences"]) == {"square", "square2"}
    for m in list(report["sequences"].values()) + [report["mean"]]:
        assert METRIC_KEYS <= set(m)
        assert m["F-measure"] > 0.7 and m["fps"] > 0
    assert report["sequences"]["square"]["frames_scored"] == 41
    table = capsys.readouterr().out
    assert "F-measure" in table and "square2" in table and "mean" in table


def test_frames_option_restricts_scoring_to_the_temporal_roi(sequences, capsys):
    assert cli(["eval", "foreground", str(sequences[0]), "--method", "mog2", "--frames", "10:25", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sequences"]["square"]["frames_scored"] == 6  # 20..25: the ROI starts at 20


@pytest.mark.parametrize("frames,cause", [("30", "A:B"), ("50:40", "invalid range"), ("61:70", "temporal ROI")])
def test_bad_frames_option_is_one_line(sequences, capsys, frames, cause):
    assert cli(["eval", "foreground", str(sequences[0]), "--method", "mog2", "--frames", frames]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("hazeflow: error: --frames:") and cause in err and "\n" not in err


@pytest.mark.parametrize("missing", ["groundtruth", "temporalROI"])
def test_missing_cdnet_pieces_fail_with_one_line(tmp_path, missing):
    root = write_cdnet(tmp_path / "broken", frames=3, truth=missing != "groundtruth",
                       roi=None if missing == "temporalROI" else "1 3")
    r = subprocess.run([sys.executable, "-m", "pipeline", "eval", "foreground", str(root), "--method", "mog2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hazeflow: error: ") and missing in lines[0]


def test_missing_groundtruth_frame_is_named(tmp_path, capsys):
    root = write_cdnet(tmp_path / "holes", frames=25)
    (root / "groundtruth" / "gt000022.png").unlink()
    assert cli(["eval", "foreground", str(root), "--method", "knn"]) != 0
    assert "gt000022.png" in capsys.readouterr().err


def test_highway_short_range(tmp_path):
    need(HIGHWAY)
    # frames 1..520 run (warm-up included); only 470..520 are scored
    out = tmp_path / "highway.json"
    assert cli(["eval", "foreground", str(HIGHWAY), "--method", "mog2", "--frames", "470:520", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    m = report["sequences"]["cdnet2014-highway"]
    assert m["frames_scored"] == 51
    assert 0.5 < m["F-measure"] <= 1 and 0 <= m["PWC"] < 10


# ---- eval dehaze ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sots3(tmp_path_factory):
    need(SOTS)
    base = tmp_path_factory.mktemp("sots")
    names = sorted(p.name for p in (SOTS / "hazy").iterdir())[:3]
    for sub in ("hazy", "GT"):
        (base / sub).mkdir()
        for n in names:
            shutil.copy(SOTS / sub / n, base / sub / n)
    return base, names


def run_dehaze(hazy, clear, method, *extra):
    from io import StringIO
    from contextlib import redirect_stdout

    buf = StringIO()
    with redirect_stdout(buf):
        rc = cli(["eval", "dehaze", "--hazy", str(hazy), "--clear", str(clear), "--method", method,
                  "--json", "-", *extra])
    assert rc == 0
    return json.loads(buf.getvalue())


def test_eval_dehaze_dcp_beats_no_dehazing(sots3, tmp_path):
    base, names = sots3
    none = run_dehaze(base / "hazy", base / "GT", "none")
    dcp = run_dehaze(base / "hazy", base / "GT", "dcp", "--save", str(tmp_path / "out"))
    for r in (none, dcp):
        assert {"pairs", "PSNR", "SSIM", "CIEDE2000", "fps"} <= set(r) and r["pairs"] == 3
        assert [p["name"] for p in r["per_pair"]] == names
    assert dcp["PSNR"] > none["PSNR"] + 2
    assert dcp["CIEDE2000"] < none["CIEDE2000"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(n.rsplit(".", 1)[0] + ".png" for n in names)


def make_pairs(root, size_clear=(20, 30)):
    (root / "hazy").mkdir(parents=True)
    (root / "clear").mkdir()
    cv2.imwrite(str(root / "hazy" / "a.png"), np.full((20, 30, 3), 128, np.uint8))
    cv2.imwrite(str(root / "clear" / "a.png"), np.full((*size_clear, 3), 100, np.uint8))
    return root / "hazy", root / "clear"


def test_identical_images_score_perfectly(tmp_path):
    hazy, _ = make_pairs(tmp_path)
    r = run_dehaze(hazy, hazy, "none")
    assert r["PSNR"] == 100.0 and r["SSIM"] == pytest.approx(1.0) and r["CIEDE2000"] == pytest.approx(0.0)


def test_dehaze_input_errors_are_one_line(tmp_path, capsys):
    hazy, clear = make_pairs(tmp_path / "size", size_clear=(21, 30))
    assert cli(["eval", "dehaze", "--hazy", str(hazy), "--clear", str(clear), "--method", "none"]) != 0
    assert "differs" in capsys.readouterr().err

    hazy, clear = make_pairs(tmp_path / "names")
    (clear / "a.png").rename(clear / "b.png")
    assert cli(["eval", "dehaze", "--hazy", str(hazy), "--clear", str(clear), "--method", "none"]) != 0
    err = capsys.readouterr().err
    assert "no file name also in" in err and "a.png" in err and "b.png" in err

    hazy, clear = make_pairs(tmp_path / "broken")
    (hazy / "a.png").write_bytes(b"not a png")
    assert cli(["eval", "dehaze", "--hazy", str(hazy), "--clear", str(clear), "--method", "dcp"]) != 0
    err = capsys.readouterr().err.strip()
    assert "a.png" in err and "cannot read" in err and len(err.splitlines()) == 1

    # tiny images are refused before any method runs, with the file named (SSIM needs a 7x7 window)
    for method, cause in (("rigan", "SSIM needs at least 7x7"), ("dcp", "SSIM needs at least 7x7")):
        hazy, clear = make_pairs(tmp_path / f"tiny_{method}")
        for folder in (hazy, clear):
            cv2.imwrite(str(folder / "a.png"), np.full((3, 3, 3), 128, np.uint8))
        assert cli(["eval", "dehaze", "--hazy", str(hazy), "--clear", str(clear), "--method", method]) != 0
        err = capsys.readouterr().err.strip()
        assert str(hazy / "a.png") in err and cause in err and len(err.splitlines()) == 1, err


def test_images_are_converted_to_8bit_bgr(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((4, 5), 77, np.uint8))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((4, 5, 3), 65535, np.uint16))
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([np.full((4, 5, 3), 9, np.uint8), np.zeros((4, 5), np.uint8)]))
    for path, value in [(grey, 77), (deep, 255), (rgba, 9)]:
        image = read_bgr8(path)
        assert image.shape == (4, 5, 3) and image.dtype == np.uint8 and np.all(image == value)


def test_eval_dehaze_weights_and_internal_scale(tmp_path, capsys):
    """--weights picks another manifest-listed graph, --internal-scale the network size; the report
    says which ran, and misuse is a one-line error naming the option."""
    rng = np.random.default_rng(5)
    hazy, clear = tmp_path / "hazy", tmp_path / "clear"
    hazy.mkdir()
    clear.mkdir()
    scene = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(clear / "a.png"), scene)
    cv2.imwrite(str(hazy / "a.png"), (scene * 0.5 + 110).astype(np.uint8))
    default = run_dehaze(hazy, clear, "rigan")
    light = run_dehaze(hazy, clear, "rigan", "--weights", "weights/rigan_light.onnx", "--internal-scale", "1")
    assert (default["weights"], default["internal_scale"]) == ("weights/rigan.onnx", 0.5)
    assert (light["weights"], light["internal_scale"]) == ("weights/rigan_light.onnx", 1.0)
    assert light["PSNR"] != default["PSNR"]
    capsys.readouterr()  # the two summaries above

    stray = tmp_path / "stray.onnx"
    stray.write_bytes(b"not listed")
    for extra, words in ((["--method", "dcp", "--weights", "weights/rigan_light.onnx"], "--weights"),
                         (["--internal-scale", "1.5"], "--internal-scale"),
                         (["--weights", str(stray)], "stray.onnx"),
                         (["--backend", "torch", "--weights", "weights/rigan_light.onnx"], "--weights")):
        argv = ["eval", "dehaze", "--hazy", str(hazy), "--clear", str(clear), *extra]
        if "--method" not in extra:
            argv += ["--method", "rigan"]
        assert cli(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
