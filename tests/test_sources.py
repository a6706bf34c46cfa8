"""Sources: video files (PyAV), CDnet image folders, synthetic scenes, URI dispatch, masking."""
from __future__ import annotations

import os

import av
import cv2
import numpy as np
import pytest

from pipeline.errors import ConfigError, SourceError, SourceNotFoundError
from pipeline.haze import apply_haze, road_depth, transmission
from pipeline.sources import mask_credentials, open_source, safe_stream_name
from pipeline.sources.file import FileSource
from pipeline.sources.folder import FolderSource, list_images
from pipeline.sources.rtsp import RtspSource
from pipeline.sources.synthetic import (
    BETA_MAX, Nuisances, SceneGenerator, SceneParams, SyntheticSource, parse_synthetic_uri, render_scene,
)
from tests.conftest import HIGHWAY, VIDEOS, need


# --- media made here -----------------------------------------------------------------
def encode_clip(path, frames=30, codec="libx264", fps=25, size=(160, 120)):
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, (i * 4) % width:(i * 4) % width + 16] = 255
            image[..., 1] = (i * 4) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def pyav_reference(path):
    """Independent decode: frame count, pts in seconds and pictures."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [f.time for f in frames], [f.to_ndarray(format="bgr24") for f in frames]


def read_all(source):
    frames, error = [], None
    try:
        with source:
            for frame in source:
                frames.append(frame)
    except SourceError as e:
        error = e
    return frames, error


@pytest.fixture(scope="module")
def mkv_clip(tmp_path_factory):
    return encode_clip(tmp_path_factory.mktemp("clips") / "clip.mkv", frames=60)


# --- file ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix,codec", [("mp4", "libx264"), ("avi", "mpeg4")])
def test_file_frames_and_pts_match_pyav(tmp_path, suffix, codec):
    path = encode_clip(tmp_path / f"clip.{suffix}", frames=30, codec=codec)
    pts, pictures = pyav_reference(path)
    source = open_source(path)
    assert isinstance(source, FileSource) and not source.is_live and source.name == "clip"
    frames, error = read_all(source)
    assert error is None
    assert len(frames) == len(pts) == 30
    assert [f.index for f in frames] == list(range(1, 31))
    assert [f.pts for f in frames] == pytest.approx(pts)
    assert all(np.array_equal(f.image, p) for f, p in zip(frames, pictures))
    assert frames[0].image.dtype == np.uint8 and frames[0].size == (160, 120)
    assert source._container is None and source.frames_read == 30  # closed explicitly


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file_yields_frames_then_errors(mkv_clip, tmp_path, fraction):
    data = mkv_clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:int(len(data) * fraction)])
    frames, error = read_all(open_source(cut))
    assert 0 < len(frames) < 60  # FFmpeg ends quietly here; the source must not
    assert isinstance(error, SourceError)
    assert error.input == str(cut) and "truncated or corrupt" in error.cause and "\n" not in str(error)


def test_corrupt_middle_is_not_taken_for_the_end(tmp_path):
    for suffix, codec in (("mp4", "libx264"), ("avi", "mpeg4")):
        path = encode_clip(tmp_path / f"clip.{suffix}", frames=60, codec=codec)
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        broken = tmp_path / f"broken.{suffix}"
        broken.write_bytes(bytes(data))
        frames, error = read_all(open_source(broken))
        assert 0 < len(frames) < 60, suffix
        assert isinstance(error, SourceError) and str(broken) in str(error), suffix


def test_file_open_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match="cannot open as video"):
        open_source(garbage)
    with pytest.raises(SourceNotFoundError):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(ConfigError, match="unknown source option"):
        open_source(encode_clip(tmp_path / "ok.mp4", frames=2), fps=3)


def test_file_real_video():
    path = need(VIDEOS / "video.avi")
    frames, error = read_all(FileSource(path))
    assert error is None and len(frames) == 374 and frames[0].size == (640, 360)
    assert frames[-1].pts == pytest.approx(373 / 30)


# --- folder --------------------------------------------------------------------------------
def write_images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((size[1], size[0], 3), 10 * i, np.uint8))


def test_folder_cdnet_numbering(tmp_path):
    seq = tmp_path / "street"
    write_images(seq / "input", ["in000012.jpg", "in000010.png", "in000011.jpg"])
    (seq / "input" / "notes.txt").write_text("not an image")
    expected = [(10, seq / "input" / "in000010.png"), (11, seq / "input" / "in000011.jpg"),
                (12, seq / "input" / "in000012.jpg")]
    assert list_images(seq) == list_images(seq / "input") == expected
    source = open_source(seq)
    assert isinstance(source, FolderSource) and source.name == "street" and len(source) == 3
    frames, error = read_all(source)
    assert error is None and [f.index for f in frames] == [10, 11, 12]
    assert frames[0].image.shape == (30, 40, 3) and frames[0].pts is None
    assert open_source(seq / "input").name == "street"


def test_folder_without_numbers_counts_from_one(tmp_path):
    write_images(tmp_path / "shots", ["b.png", "a.png", "c7.png"])
    assert [(i, p.name) for i, p in list_images(tmp_path / "shots")] == [(1, "a.png"), (2, "b.png"), (3, "c7.png")]


def test_folder_unreadable_image_names_the_file(tmp_path):
    folder = tmp_path / "seq"
    write_images(folder, ["in000001.jpg", "in000002.jpg"])
    (folder / "in000003.jpg").write_bytes(b"not a jpeg")
    frames, error = read_all(open_source(folder))
    assert len(frames) == 2
    assert isinstance(error, SourceError) and error.input.endswith("in000003.jpg")
    with pytest.raises(SourceError, match="no images"):
        FolderSource(tmp_path / "seq" / "..")  # resolves to tmp_path: folders only


def test_folder_cdnet_highway():
    images = list_images(need(HIGHWAY / "input"))
    assert len(images) == 1700 and images[0][0] == 1 and images[-1][0] == 1700
    assert images[459][1].name == "in000460.jpg"
    with FolderSource(HIGHWAY) as source:
        frame = next(source)
    assert source.name == "cdnet2014-highway" and frame.index == 1 and frame.image.shape == (240, 320, 3)


# --- synthetic ------------------------------------------------------------------------------
SATURATED = ((0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 0, 255), (0, 255, 255))


def test_synthetic_is_deterministic():
    a = list(SceneGenerator(160, 120, seed=5, haze=0.3, nuisances="hard").frames(20))
    b = list(render_scene(SceneParams(160, 120, frames=20, haze=0.3, nuisances=Nuisances(
        illumination=0.3, jitter=3, shadows=0.8, sway=5.0, noise=5.0)), seed=5))
    c = list(SceneGenerator(160, 120, seed=6, haze=0.3, nuisances="hard").frames(20))
    assert len(a) == 20
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_synthetic_truth_is_exactly_the_vehicles():
    gen = SceneGenerator(200, 150, seed=2, palette=SATURATED, density=0.2)
    background = gen.background()
    covered = 0
    for image, truth in gen.frames(40):
        assert truth.dtype == np.uint8 and set(np.unique(truth)) <= {0, 255}
        changed = (image != background).any(axis=2)
        assert np.array_equal(changed, truth == 255)
        covered += int(truth.any())
    assert covered >= 30  # traffic flows from the first frame


def test_nuisances_never_touch_the_truth():
    clean = SceneGenerator(200, 150, seed=3, nuisances="none").frames(30)
    mild = SceneGenerator(200, 150, seed=3, haze=0.5, nuisances="mild").frames(30)
    changed_background = 0
    for (image0, truth0), (image1, truth1) in zip(clean, mild):
        assert np.array_equal(truth0, truth1)
        changed_background += int((image0 != image1).any(axis=2)[truth0 == 0].sum())
    assert changed_background > 0


def test_shadows_darken_background_only():
    plain = SceneGenerator(200, 150, seed=4, palette=SATURATED, density=0.2)
    shaded = SceneGenerator(200, 150, seed=4, palette=SATURATED, density=0.2, nuisances={"shadows": 1.0})
    darker = 0
    for (image0, truth0), (image1, truth1) in zip(plain.frames(20), shaded.frames(20)):
        assert np.array_equal(truth0, truth1)
        gray0 = image0.astype(int).sum(axis=2)
        gray1 = image1.astype(int).sum(axis=2)
        assert (gray1 <= gray0).all()
        darker += int(((gray1 < gray0) & (truth1 == 0)).sum())
    assert darker > 100


def test_jitter_moves_picture_and_truth_together():
    gen = SceneGenerator(200, 150, seed=7, palette=SATURATED, density=0.2, nuisances={"jitter": 3})
    shifts = set()
    for image, truth in gen.frames(15):
        matches = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)
                   if np.array_equal((image != gen.background((dx, dy))).any(axis=2), truth == 255)]
        assert len(matches) >= 1
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_sway_moves_trees_not_truth():
    gen = SceneGenerator(320, 240, seed=8, palette=SATURATED, nuisances={"sway": 5.0})
    background = gen.background()
    moved = 0
    for image, truth in gen.frames(20):
        moved += int(((image != background).any(axis=2) & (truth == 0)).sum())
    assert moved > 50


def test_synthetic_haze_follows_the_scattering_model():
    clear = list(SceneGenerator(200, 150, seed=9).frames(5))
    gen = SceneGenerator(200, 150, seed=9, haze=0.6, airlight=0.8)
    for (j, truth0), (hazy, truth1) in zip(clear, gen.frames(5)):
        assert np.array_equal(truth0, truth1)
        t = transmission(gen.depth(), 0.6 * BETA_MAX)
        expected = apply_haze(j, t, 0.8)
        assert np.abs(expected.astype(int) - hazy.astype(int)).max() <= 1
        a = 0.8 * 255
        dark, bright = j.astype(float) < a - 5, j.astype(float) > a + 5
        assert (hazy[dark] >= j[dark]).all() and (hazy[bright] <= j[bright]).all()


def test_haze_model_functions():
    depth = road_depth(100, 8, horizon=0.3)
    assert depth.shape == (100, 8) and depth.dtype == np.float32
    assert depth[0, 0] == depth[29, 0] > depth[31, 0] > depth[99, 0]  # sky far, ground nearer downwards
    t = transmission(depth, 0.05)
    assert np.all((t > 0) & (t <= 1)) and t[99, 0] > t[40, 0]
    image = np.full((100, 8, 3), 50, np.uint8)
    hazy = apply_haze(image, t, airlight=0.9)
    assert hazy.dtype == np.uint8
    assert hazy[99, 0, 0] == round(50 * t[99, 0] + 229.5 * (1 - t[99, 0]))
    as_float = apply_haze(image / 255.0, t, airlight=(0.9, 0.9, 0.9))
    assert as_float.dtype == np.float32 and np.abs(as_float * 255 - hazy).max() <= 0.51
    with pytest.raises(ValueError):
        transmission(depth, -1)


def test_synthetic_uri():
    params, seed = parse_synthetic_uri("synthetic:traffic?size=96x64&frames=7&haze=0.5&seed=1&nuisances=mild&noise=0")
    assert (params.width, params.height, params.frames, params.haze, seed) == (96, 64, 7, 0.5, 1)
    assert params.nuisances.noise == 0 and params.nuisances.shadows == 0.5
    source = open_source("synthetic:traffic?size=96x64&frames=7&seed=1")
    assert isinstance(source, SyntheticSource) and source.name == "synthetic-traffic-seed1"
    frames, error = read_all(source)
    assert error is None and [f.index for f in frames] == list(range(1, 8))
    assert frames[0].image.shape == (64, 96, 3) and frames[0].truth.shape == (64, 96)
    assert frames[1].pts == pytest.approx(1 / 25)


@pytest.mark.parametrize("uri,message", [
    ("synthetic:city", "unknown scene 'city'"),
    ("synthetic:traffic?size=640", "size='640' is not WIDTHxHEIGHT"),
    ("synthetic:traffic?haze=2", "haze must be in"),
    ("synthetic:traffic?haze=thick", "haze='thick' is not a number"),
    ("synthetic:traffic?colour=red", "unknown parameter 'colour'"),
    ("synthetic:traffic?nuisances=storm", "unknown nuisance preset"),
    ("synthetic:traffic?frames=1.5", "frames='1.5' is not a whole number"),
])
def test_synthetic_uri_errors(uri, message):
    with pytest.raises(SourceError, match=message) as info:
        open_source(uri)
    assert info.value.input == uri


# --- names and credentials -----------------------------------------------------------------
def test_masking_and_names():
    assert mask_credentials("rtsp://admin:pa:ss@cam:554/ch1") == "rtsp://admin:***@cam:554/ch1"
    assert mask_credentials("rtsp://cam/ch1") == "rtsp://cam/ch1"
    source = open_source("rtsp://admin:secret@10.0.0.5:554/Streaming/Channels/101")  # does not connect yet
    assert isinstance(source, RtspSource) and source.is_live
    assert source.uri_masked == "rtsp://admin:***@10.0.0.5:554/Streaming/Channels/101"
    assert "secret" not in source.name and "/" not in source.name and "admin" not in source.name
    for text in ("..", "../../etc", "a/b\\c", ""):
        name = safe_stream_name(text)
        assert name and "/" not in name and "\\" not in name and ".." not in name


def test_resolution_change_marks_a_stream_reset(tmp_path):
    folder = tmp_path / "mixed"
    write_images(folder, ["in000001.png", "in000002.png"], size=(40, 30))
    write_images(folder, ["in000003.png"], size=(64, 48))
    frames, error = read_all(FolderSource(folder))
    assert error is None and [f.data.get("stream_reset") for f in frames] == [None, None, "resolution_change"]


def test_file_closed_early_releases_the_container(tmp_path):
    source = FileSource(encode_clip(tmp_path / "clip.mp4", frames=10))
    with source:
        first = [next(source) for _ in range(3)]
    assert [f.index for f in first] == [1, 2, 3] and source._container is None and source.closed
    assert list(source) == []  # a closed source yields nothing more
