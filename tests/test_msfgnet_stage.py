"""The msfgnet pipeline stage: shipped weights, ONNX Runtime vs PyTorch parity, short streams, bad weights."""
from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest

from engines.weights import MANIFEST, WEIGHTS_DIR, sha256_of, verified_path
from pipeline.cdnet import Confusion
from pipeline.errors import ConfigError, WeightsError
from pipeline.frame import Frame
from pipeline.sources.synthetic import SceneGenerator
from pipeline.stages import stage_class
from pipeline.stages.msfgnet import MsfgnetStage, window_indices, working_size

ONNX = WEIGHTS_DIR / "msfgnet.onnx"
PT = WEIGHTS_DIR / "msfgnet.pt"

needs_weights = pytest.mark.skipif(not (ONNX.is_file() and PT.is_file()),
                                   reason="weights/msfgnet.{onnx,pt} not shipped in this checkout")


@functools.lru_cache(maxsize=None)
def scene(seed: int = 3, frames: int = 90, nuisances: str = "mild", size=(320, 240)):
    """A synthetic traffic clip with exact truth (rendered once per test session)."""
    gen = SceneGenerator(*size, seed=seed, nuisances=nuisances, density=0.1)
    return [(image, truth) for image, truth in gen.frames(frames)]


def feed(stage, clip, stream="cam", start=1):
    frames = [Frame(stream, i, None, image, truth) for i, (image, truth) in enumerate(clip, start=start)]
    for f in frames:
        stage.process([f])
    return frames


# --- pure helpers -------------------------------------------------------------------------
def test_window_is_padded_with_the_oldest_frame_while_the_stream_is_short():
    assert window_indices(1, 8, 5).tolist() == [0] * 8
    assert window_indices(12, 8, 5).tolist() == [0, 0, 0, 0, 0, 1, 6, 11]
    assert window_indices(36, 8, 5).tolist() == [0, 5, 10, 15, 20, 25, 30, 35]


def test_working_size_is_a_multiple_of_the_network_stride():
    assert working_size(320, 240, 0.5) == (160, 120)
    assert working_size(640, 360, 0.5) == (320, 180)
    assert working_size(641, 359, 0.5) == (320, 180)
    assert all(v % 4 == 0 for v in working_size(333, 222, 0.37))


@pytest.mark.parametrize("field, value, match", [
    ("threshold", 1.5, "threshold"), ("backend", "tensorrt", "backend"), ("scale", 0.0, "scale"),
    ("stride", 0, "stride"), ("device", "tpu", "device"), ("threads", -1, "threads"),
    ("refine", "bilateral", "refine"),
])
def test_bad_config_values_are_named(field, value, match):
    with pytest.raises(ConfigError, match=match):
        MsfgnetStage(MsfgnetStage.Config(**{field: value}))


def test_registered_under_its_fixed_name():
    assert stage_class("msfgnet") is MsfgnetStage


# --- weights ------------------------------------------------------------------------------
@needs_weights
def test_shipped_weights_match_the_manifest_and_say_how_they_were_made():
    entries = json.loads(MANIFEST.read_text())["files"]
    for path in (ONNX, PT):
        assert verified_path(path) == path
        entry = entries[path.name]
        assert entry["sha256"] == sha256_of(path)
        assert entry["model"] == "msfgnet"
        assert "1200" in json.dumps(entry["data"])  # the validation frames are named
        assert entry["metrics"]["val_F_highway_1200_1700"] >= 0.0


def test_missing_weights_are_one_line_naming_the_file(tmp_path):
    stage = MsfgnetStage(MsfgnetStage.Config(weights=str(tmp_path / "msfgnet.onnx")))
    with pytest.raises(WeightsError) as e:
        stage.setup()
    assert str(tmp_path / "msfgnet.onnx") in str(e.value) and "not found" in e.value.cause
    assert "\n" not in str(e.value)


@needs_weights
def test_corrupt_weights_are_refused_by_hash(tmp_path):
    bad = tmp_path / "msfgnet.onnx"
    data = bytearray(ONNX.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        MsfgnetStage(MsfgnetStage.Config(weights=str(bad))).setup()
    assert e.value.input == str(bad) and "does not match the manifest" in e.value.cause


@needs_weights
def test_unlisted_weights_are_refused(tmp_path):
    other = tmp_path / "mine.onnx"
    shutil.copy(ONNX, other)
    with pytest.raises(WeightsError, match="not listed"):
        MsfgnetStage(MsfgnetStage.Config(weights=str(other))).setup()


def _with_manifest(monkeypatch, tmp_path, files):
    """Point weight verification at a manifest of our own (real hashes of real files)."""
    import engines.torch.runner as torch_runner
    from engines import weights

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": {p.name: {"sha256": sha256_of(p)} for p in files}}))
    real = weights.verified_path
    patched = lambda path, manifest_=None: real(path, manifest)  # noqa: E731
    monkeypatch.setattr(weights, "verified_path", patched)
    monkeypatch.setattr(torch_runner, "verified_path", patched)


def test_weights_of_another_shape_are_refused_with_the_file_name(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from training.models.msfgnet import MSFgNet, MsfgnetSpec

    wrong = tmp_path / "msfgnet.pt"
    torch.save(MSFgNet(MsfgnetSpec(enc2=24)).state_dict(), wrong)
    _with_manifest(monkeypatch, tmp_path, [wrong])
    with pytest.raises(WeightsError) as e:
        MsfgnetStage(MsfgnetStage.Config(backend="torch", torch_weights=str(wrong))).setup()
    assert str(wrong) in str(e.value) and "\n" not in str(e.value)


def test_a_graph_that_is_not_onnx_is_refused(tmp_path, monkeypatch):
    junk = tmp_path / "msfgnet.onnx"
    junk.write_bytes(b"definitely not a protobuf" * 10)
    _with_manifest(monkeypatch, tmp_path, [junk])
    with pytest.raises(WeightsError, match="ONNX Runtime cannot load it"):
        MsfgnetStage(MsfgnetStage.Config(weights=str(junk))).setup()


def test_an_onnx_graph_with_another_input_shape_is_refused(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from engines.export import onnx_from_torch

    other = onnx_from_torch(torch.nn.Conv1d(3, 1, 1), (torch.rand(1, 3, 16),), tmp_path / "msfgnet.onnx",
                            ["frames"], ["fg_prob"], {"frames": {0: "n", 2: "w"}})
    _with_manifest(monkeypatch, tmp_path, [other])
    with pytest.raises(WeightsError) as e:
        MsfgnetStage(MsfgnetStage.Config(weights=str(other))).setup()
    assert e.value.input == str(other) and "(N, T, H, W)" in e.value.cause


# --- behaviour with the shipped weights ---------------------------------------------------
@pytest.fixture(scope="module")
def ort_stage():
    if not ONNX.is_file():
        pytest.skip("weights/msfgnet.onnx not shipped in this checkout")
    with MsfgnetStage(MsfgnetStage.Config(backend="onnxruntime", threads=1)) as stage:
        yield stage


@needs_weights
def test_outputs_are_probability_and_mask_at_input_resolution(ort_stage):
    frames = feed(ort_stage, scene()[:3], stream="shapes")
    for f in frames:
        assert f.data["fg_prob"].shape == (240, 320) and f.data["fg_prob"].dtype == np.float32
        assert f.data["mask"].shape == (240, 320) and f.data["mask"].dtype == np.uint8
        assert set(np.unique(f.data["mask"])) <= {0, 255}
        assert np.array_equal(f.data["mask"] > 0, f.data["fg_prob"] > 0.5)


@needs_weights
def test_first_frame_of_a_stream_has_an_empty_mask(ort_stage):
    # a one-frame window has seen no motion: every frame of the window is the same picture
    clip = scene()
    (first,) = feed(ort_stage, clip[40:41], stream="short")
    assert clip[40][1].any()  # there are vehicles in the picture...
    assert (first.data["mask"] > 0).mean() < 0.002  # ...but nothing has moved yet


@needs_weights
def test_resolution_change_starts_a_fresh_window(ort_stage):
    feed(ort_stage, scene()[:6], stream="zoom")
    small = scene(frames=4, size=(160, 120))
    (f,) = feed(ort_stage, small[:1], stream="zoom")
    assert f.data["mask"].shape == (120, 160)
    assert ort_stage.buffer.count("zoom") == 1
    assert (f.data["mask"] > 0).mean() < 0.002


@needs_weights
def test_a_batch_of_two_streams_gives_what_one_frame_at_a_time_gives():
    a, b = scene(seed=3)[:8], scene(seed=4, frames=8)
    with MsfgnetStage(MsfgnetStage.Config(threads=1, stride=2)) as one, \
         MsfgnetStage(MsfgnetStage.Config(threads=1, stride=2)) as batched:
        single = [f for pair in zip(feed(one, a, "a"), feed(one, b, "b")) for f in pair]
        frames = [Frame(s, i, None, clip[i][0]) for i in range(8) for s, clip in (("a", a), ("b", b))]
        for k in range(0, 16, 4):
            batched.process(frames[k:k + 4])
    for x, y in zip(single, frames):
        assert x.stream == y.stream and x.index - 1 == y.index
        assert np.abs(x.data["fg_prob"] - y.data["fg_prob"]).max() < 1e-5


@needs_weights
def test_dehazed_image_is_used_when_present(ort_stage):
    image, truth = scene()[50]
    f = Frame("dh", 1, None, np.zeros_like(image), truth, {"dehazed": image})
    ort_stage.process([f])
    g = Frame("dh2", 1, None, image, truth)
    ort_stage.process([g])
    assert np.array_equal(f.data["fg_prob"], g.data["fg_prob"])


@needs_weights
def test_onnxruntime_and_torch_backends_match_the_pytorch_model():
    """Both runtime backends against the fp32 PyTorch model on the windows the stage builds.

    Tolerance: the project's fp32 parity row for msfgnet (engines.parity), i.e. well
    under one grey level of probability; ONNX Runtime only reorders the arithmetic.
    """
    torch = pytest.importorskip("torch")
    from engines.parity import tolerance_for
    from training.models.msfgnet import MSFgNet

    tol = tolerance_for("msfgnet", "fp32")
    model = MSFgNet().eval()
    model.load_state_dict(torch.load(PT, weights_only=True))
    config = dict(threads=1, stride=2)
    errors = {"onnxruntime": [], "torch": [], "stages": []}
    with MsfgnetStage(MsfgnetStage.Config(backend="onnxruntime", **config)) as ort_stage, \
         MsfgnetStage(MsfgnetStage.Config(backend="torch", **config)) as torch_stage:
        for i, (image, _) in enumerate(scene()[:30]):
            a, b = Frame("p", i, None, image), Frame("p", i, None, image)
            window = ort_stage.window(a)[None]           # the network input the stage builds
            with torch.no_grad():
                ref = model(torch.from_numpy(window)).numpy()
            ort_prob = ort_stage.runner.infer({"frames": window})["fg_prob"]
            ort_stage._write(a, ort_prob[0, 0], window[0])
            torch_stage.process([b])                      # the torch stage builds its own window
            errors["onnxruntime"].append(np.abs(ort_prob - ref))
            errors["torch"].append(np.abs(torch_stage.runner.infer({"frames": window})["fg_prob"] - ref))
            errors["stages"].append(np.abs(a.data["fg_prob"] - b.data["fg_prob"]))
    for name, diffs in errors.items():
        worst, mean = max(float(d.max()) for d in diffs), float(np.mean([d.mean() for d in diffs]))
        assert worst <= tol.max_abs and mean <= tol.mean_abs, (name, worst, mean)


@needs_weights
def test_detects_the_moving_vehicles_of_a_synthetic_scene(ort_stage):
    clip = scene(seed=11, frames=90, nuisances="mild")
    frames = feed(ort_stage, clip, stream="quality")
    conf = Confusion()
    for f in frames[40:]:
        conf.add(f.data["mask"], f.truth)
    assert conf.metrics()["F-measure"] > 0.6, conf.metrics()


def test_refine_off_written_bare_in_yaml_is_off():
    from pipeline.config import config_from_dict
    import yaml

    section = yaml.safe_load("stages:\n  - msfgnet: {refine: off}\n")
    config = config_from_dict(section)
    stage_config = config.stages[0][1] if isinstance(config.stages[0], tuple) else config.stages[0].config
    from pipeline.stages.msfgnet import refine_mode

    assert stage_config.refine is False and refine_mode(MsfgnetStage(stage_config).config.refine) == "off"


def test_refinement_on_the_rectangle_equals_the_whole_frame_filter():
    """The host filters only the rectangle around the probable foreground, grown by its reach;
    inside it the result is the whole frame's filter, and outside it nothing is near a threshold."""
    import cv2

    from pipeline.guided import guided_filter
    from pipeline.stages.msfgnet import REFINE_EPS, REFINE_FLOOR, REFINE_RADIUS, refine_guided

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (240, 320, 3), np.uint8)
    prob = np.zeros((240, 320), np.float32)
    prob[60:120, 100:180] = 0.9
    prob = cv2.GaussianBlur(prob, (0, 0), 3)
    whole = guided_filter(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255, prob,
                          REFINE_RADIUS, REFINE_EPS)
    got = refine_guided(prob, image)
    near = np.maximum(got, whole) > REFINE_FLOOR
    assert near.sum() > 4000 and np.abs(got - whole)[near].max() < 1e-4
    assert np.array_equal(got > 0.5, whole > 0.5)
    assert np.array_equal(refine_guided(np.zeros_like(prob), image), np.zeros_like(prob))  # nothing to refine


REFINE_ONNX = WEIGHTS_DIR / "msfgnet_refine.onnx"
needs_refine = pytest.mark.skipif(not REFINE_ONNX.is_file(), reason="weights/msfgnet_refine.onnx not shipped in this checkout")


@needs_weights
@needs_refine
def test_refinement_puts_the_mask_on_the_vehicles_edges():
    """The network works at half size; on crisp synthetic vehicles the guided mask is closer to the
    truth than the bilinear upsampling alone (validation families: +0.01 F), and the learned edge
    closer still (validation families: +0.03 to +0.06 F; docs/models.md)."""
    clip = scene(seed=11, frames=90, nuisances="mild")
    scores = {}
    for refine in ("off", "guided", "learned"):
        with MsfgnetStage(MsfgnetStage.Config(backend="onnxruntime", threads=1, refine=refine)) as stage:
            conf = Confusion()
            for f in feed(stage, clip, stream=refine)[40:]:
                conf.add(f.data["mask"], f.truth)
        scores[refine] = conf.metrics()["F-measure"]
    assert scores["guided"] > scores["off"] + 0.005, scores
    assert scores["learned"] > scores["guided"] + 0.01, scores


def test_refine_inputs_are_the_documented_channels_of_the_rectangle():
    import cv2

    from pipeline.refine import FEATURES, change_maps, refine_inputs

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (48, 64, 3), np.uint8)
    prob = rng.random((48, 64), np.float32)
    guided = prob * 1.4 - 0.2                     # the guided filter may leave [0, 1]
    window = rng.random((8, 24, 32), np.float32)  # working size: half
    near, far = change_maps(window)
    assert np.allclose(near, np.abs(window[-1] - window[-2])) and np.allclose(far, np.abs(window[-1] - window[0]))
    x = refine_inputs(prob, guided, image, (near, far), (10, 5, 42, 37))
    assert x.shape == (1, len(FEATURES), 32, 32) and x.dtype == np.float32
    crop = np.s_[5:37, 10:42]
    assert np.array_equal(x[0, 0], prob[crop])
    assert np.array_equal(x[0, 1], np.clip(guided, 0, 1)[crop])
    assert np.allclose(x[0, 2:5], image[crop].transpose(2, 0, 1) / 255.0)
    assert np.allclose(x[0, 5], cv2.resize(near, (64, 48), interpolation=cv2.INTER_LINEAR)[crop])
    assert np.allclose(x[0, 6], cv2.resize(far, (64, 48), interpolation=cv2.INTER_LINEAR)[crop])


@needs_weights
@needs_refine
def test_learned_refinement_with_a_mismatched_file_is_a_one_line_weights_error(tmp_path):
    """A refine head whose bytes are not the manifest's is refused before it runs, naming the file;
    a graph that is not a refine head (MSFgNet's own, listed) is refused for its inputs."""
    bad = tmp_path / "msfgnet_refine.onnx"
    data = bytearray(REFINE_ONNX.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    image = np.zeros((240, 320, 3), np.uint8)
    image[100:140, 100:160] = 200
    for path, match in ((bad, "does not match the manifest"), (ONNX, "features")):
        with pytest.raises(WeightsError, match=match) as err:
            with MsfgnetStage(MsfgnetStage.Config(threads=1, refine_weights=str(path))) as stage:
                stage.process([Frame("a", 1, None, image)])
        assert str(path.name) in str(err.value) and "\n" not in str(err.value)


@needs_weights
def test_the_onnxruntime_stage_never_imports_torch_or_training():
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from pipeline.frame import Frame\n"
            "from pipeline.stages.msfgnet import MsfgnetStage\n"
            "with MsfgnetStage(MsfgnetStage.Config(threads=1)) as s:\n"
            "    s.process([Frame('a', 1, None, np.zeros((240, 320, 3), np.uint8))])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "[]"


@needs_weights
@needs_refine
def test_the_device_paths_learned_edge_gives_the_hosts_masks():
    """The device path's refinement (torch, whole frame; here on CPU tensors, no GPU needed) against
    the host's (ONNX Runtime on the rectangle) on the same network output: the same masks."""
    torch = pytest.importorskip("torch")

    clip = scene(seed=11, frames=60, nuisances="mild")
    host = MsfgnetStage(MsfgnetStage.Config(backend="onnxruntime", threads=1))
    device = MsfgnetStage(MsfgnetStage.Config(backend="onnxruntime", threads=1))
    device._refiner = device._refine_runner(device=True)   # TorchRunner on the config's device (cpu)
    differ, mean_gap = [], []
    with host:
        host.setup()
        for i, (image, _) in enumerate(clip, start=1):
            a, b = Frame("s", i, None, image), Frame("s", i, None, image)
            window = host.window(a)[None]
            prob = host.runner.infer({"frames": window})["fg_prob"]
            host._write(a, prob[0, 0], window[0])
            if i < 40:
                continue
            device._write_device(b, torch.from_numpy(prob[:, :1].copy()), image.shape[:2], torch.from_numpy(image),
                                 torch.from_numpy(window[0].copy()))
            assert (a.data["mask"] > 0).any()
            differ.append(((a.data["mask"] > 0) != (b.data["mask"].numpy() > 0)).mean())
            mean_gap.append(np.abs(a.data["fg_prob"] - b.data["fg_prob"].numpy()).mean())
    device._refiner.deactivate()
    assert max(differ) < 1e-3 and max(mean_gap) < 5e-3, (max(differ), max(mean_gap))


@needs_weights
@needs_refine
def test_the_device_paths_learned_edge_refuses_a_mismatched_state_dict(tmp_path):
    pytest.importorskip("torch")
    bad = tmp_path / "msfgnet_refine.pt"
    data = bytearray((WEIGHTS_DIR / "msfgnet_refine.pt").read_bytes())
    data[-20] ^= 0xFF
    bad.write_bytes(bytes(data))
    stage = MsfgnetStage(MsfgnetStage.Config(refine_weights=str(tmp_path / "msfgnet_refine.onnx")))
    with pytest.raises(WeightsError, match="does not match the manifest") as err:
        stage._refine_runner(device=True)
    assert "msfgnet_refine.pt" in str(err.value) and "\n" not in str(err.value)
