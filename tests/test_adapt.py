"""`hazeflow adapt` end to end on a short real-encoded clip, and the hash check of its output folder."""
from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pytest

pytest.importorskip("torch", reason="hazeflow adapt trains with PyTorch (the [train] extra)")

from pipeline.cli import main as cli  # noqa: E402
from pipeline.frame import Frame  # noqa: E402
from pipeline.sources.synthetic import NUISANCE_PRESETS, SceneGenerator  # noqa: E402
from pipeline.stages.msfgnet import MsfgnetStage  # noqa: E402
from tests.test_eval import write_cdnet  # noqa: E402


def encode_traffic_clip(path, frames: int = 160, fps: int = 25):
    """A synthetic traffic scene (mild nuisances) encoded to H.264 with PyAV; returns its exact truths."""
    gen = SceneGenerator(320, 240, seed=7, frames=frames, nuisances=NUISANCE_PRESETS["mild"])
    truths = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for image, truth in gen.frames():
            truths.append(truth)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return truths


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    clip = root / "camera.mp4"
    encode_traffic_clip(clip)
    out = root / "camera-model"
    rc = cli(["adapt", "--input", str(clip), "--minutes", "1", "--out", str(out), "--iterations", "4",
              "--threads", "1", "--no-progress"])
    assert rc == 0
    return clip, out


def test_adapt_writes_a_selectable_hash_checked_folder(adapted):
    clip, out = adapted
    assert {p.name for p in out.iterdir()} == {"msfgnet.onnx", "msfgnet.pt", "manifest.json", "adapt.json"}
    report = json.loads((out / "adapt.json").read_text())
    assert report["frames"] == 160 and report["held_back_frames"] == 32
    assert report["fine_tuning"]["iterations"] == 4
    assert report["kept"] in ("adapted", "base") and report["why"]
    for side in ("check_base", "check_adapted"):
        assert 0 <= report[side]["agreement_F"] <= 1
    # the pseudo-labels ignore what the three opinions disagree on, and find both classes
    share = report["pseudo_label_share"]
    assert share["foreground"] > 0 and share["background"] > 0.5 and share["ignored"] > 0
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert set(manifest) == {"msfgnet.onnx", "msfgnet.pt"}
    assert manifest["msfgnet.onnx"]["kept"] == report["kept"]

    # a stage selects the folder with weights: DIR and finds the moving vehicles
    gen = SceneGenerator(320, 240, seed=7, frames=100, nuisances=NUISANCE_PRESETS["mild"])
    with MsfgnetStage(MsfgnetStage.Config(weights=str(out), threads=1)) as stage:
        masks = [(stage.process([Frame("cam", i, None, image)])[0].data["mask"], truth)
                 for i, (image, truth) in enumerate(gen.frames(), start=1)]
    hits = sum(int(((m > 0) & (t > 0)).sum()) for m, t in masks[80:])
    assert hits > 0.5 * sum(int((t > 0).sum()) for _, t in masks[80:])


def test_eval_foreground_scores_an_adapted_folder(adapted, tmp_path):
    _, out = adapted
    seq = write_cdnet(tmp_path / "square", frames=40, roi="20 40")
    report = tmp_path / "fg.json"
    assert cli(["eval", "foreground", str(seq), "--method", "msfgnet", "--weights", str(out),
                "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["weights"] == str(out) and data["sequences"]["square"]["frames_scored"] == 21


def test_adapted_weights_with_a_wrong_hash_are_refused(adapted, tmp_path, capsys):
    _, out = adapted
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    with open(bad / "msfgnet.onnx", "ab") as f:
        f.write(b"\0")
    seq = write_cdnet(tmp_path / "square", frames=20, roi="10 20")
    assert cli(["eval", "foreground", str(seq), "--method", "msfgnet", "--weights", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"hazeflow: error: {bad / 'msfgnet.onnx'}: sha256 ") and "does not match" in err


def test_weights_option_is_only_for_msfgnet(tmp_path, capsys):
    seq = write_cdnet(tmp_path / "square", frames=20, roi="10 20")
    assert cli(["eval", "foreground", str(seq), "--method", "mog2", "--weights", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "hazeflow: error: --weights: only --method msfgnet has weights, not mog2"


def test_too_short_footage_is_one_line(tmp_path, capsys):
    clip = tmp_path / "short.mp4"
    encode_traffic_clip(clip, frames=40)
    assert cli(["adapt", "--input", str(clip), "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hazeflow: error: --minutes: 40 frames are too few") and "\n" not in err


def test_pseudo_labels_need_all_three_opinions():
    from training.adapt import BG, FG, IGNORE, AdaptSettings, pseudo_labels

    grey = np.full((60, 16, 16), 100, np.uint8)
    grey[30, 4:8, 4:8] = 200                        # something moves through frame 30 only
    prob = np.zeros((1, 16, 16), np.float32)
    prob[0, 4:8, 4:8] = 0.9                         # the model agrees there
    prob[0, 10:12, 10:12] = 0.5                     # and is unsure here
    mog = {30: np.zeros((16, 16), np.uint8)}
    mog[30][4:8, 4:6] = 255                         # MOG2 sees only half of the object
    label = pseudo_labels(grey, np.array([30]), prob, mog, AdaptSettings(ring=0))[0]
    assert (label[4:8, 4:6] == FG).all()            # all three agree: foreground
    assert (label[4:8, 6:8] == IGNORE).all()        # MOG2 disagrees: ignored
    assert (label[10:12, 10:12] == IGNORE).all()    # the model is unsure: ignored
    assert label[0, 0] == BG and (label == BG).mean() > 0.8


def test_interrupted_fine_tuning_resumes_where_it_stopped(tmp_path):
    import time

    import torch

    from training.adapt import FG, IGNORE, AdaptSettings, fine_tune
    from training.models.msfgnet import MSFgNet

    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 255, (40, 32, 32), dtype=np.uint8)
    labels = np.where(rng.random((10, 32, 32)) < 0.1, FG, IGNORE).astype(np.uint8)
    numbers = np.arange(30, 40)
    forever = time.monotonic() + 3600
    torch.manual_seed(0)
    base = MSFgNet()

    def run(iterations, state, resume):
        model = MSFgNet()
        model.load_state_dict(base.state_dict())
        s = AdaptSettings(iterations=iterations, batch=2, crop=32)
        return model, fine_tune(model, grey, numbers, labels, 2, s, state, forever, seed=1, resume=resume,
                                progress=False)

    straight, _ = run(4, tmp_path / "a.pt", resume=False)
    run(2, tmp_path / "b.pt", resume=False)                     # "interrupted" after 2 steps
    resumed, info = run(4, tmp_path / "b.pt", resume=True)
    assert info == {**info, "iterations": 4, "resumed_at": 2}
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_adapt_sees_a_shaken_camera_held_still(tmp_path):
    """With the stage's ``stabilize: auto`` the footage adapt learns from is registered and warped into
    the reference as the stage's windows are: frames 30 apart then differ less than as shot."""
    from pipeline.sources.synthetic import Nuisances
    from training.adapt import read_footage

    gen = SceneGenerator(320, 240, seed=3, frames=80, nuisances=Nuisances(jitter=4))
    clip = tmp_path / "shaken.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for image, _ in gen.frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    def spread(grey):  # median |difference| of frames 30 apart, away from the replicated edges
        return float(np.mean([np.median(np.abs(grey[t].astype(int) - grey[t - 30])[8:-8, 8:-8])
                              for t in range(30, len(grey))]))

    still, _, moved = read_footage(str(clip), 1, 0.5, progress=False, stabilize="auto")
    seen, _, none = read_footage(str(clip), 1, 0.5, progress=False, stabilize="off")
    assert len(still) == len(seen) == 80 and none == 0 and moved > 20
    assert spread(still) < 0.7 * spread(seen), (spread(still), spread(seen))


def test_the_self_check_keeps_the_base_where_the_pseudo_labels_are_too_poor_to_judge_by():
    from training.adapt import AdaptSettings, adapted_is_better

    s = AdaptSettings()
    good = {"agreement_F": 0.90, "fp_rate_empty_frames": 0.01, "flicker": 0.001}
    better = {"agreement_F": 0.93, "fp_rate_empty_frames": 0.01, "flicker": 0.001}
    assert adapted_is_better(good, better, s)[0]
    keep, why = adapted_is_better({**good, "agreement_F": 0.32}, {**better, "agreement_F": 0.50}, s)
    assert not keep and "too poor to judge" in why
    keep, why = adapted_is_better(good, {**better, "fp_rate_empty_frames": 0.02}, s)
    assert not keep and "empty frames" in why
    keep, why = adapted_is_better(good, {**better, "agreement_F": 0.905}, s)
    assert not keep and "not 0.01 above" in why


def test_the_self_check_ignores_flicker_of_a_few_pixels_but_not_more():
    from training.adapt import AdaptSettings, adapted_is_better

    s = AdaptSettings()
    base = {"agreement_F": 0.90, "fp_rate_empty_frames": float("nan"), "flicker": 0.00004}
    assert adapted_is_better(base, {**base, "agreement_F": 0.93, "flicker": 0.00005}, s)[0]
    keep, why = adapted_is_better(base, {**base, "agreement_F": 0.93, "flicker": 0.0005}, s)
    assert not keep and "flicker" in why
