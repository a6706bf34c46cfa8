"""MSFgNet as a PyTorch module: shapes, invariances, size accounting, ONNX export parity."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training tests need torch (the [train] extra)")

from training.models.msfgnet import (  # noqa: E402
    STRIDE, MSFgNet, MsfgnetSpec, build, check_input_size, count_macs, count_parameters,
    sort_over_time, sorting_network, standardise,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MSFgNet().eval()


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16])
def test_sorting_network_sorts_like_torch_sort(n):
    x = torch.randn(3, n, 7, 5)
    assert torch.equal(sort_over_time(x), torch.sort(x, dim=1).values)


def test_batcher_network_for_eight_frames_has_nineteen_comparators():
    assert len(sorting_network(8)) == 19


@pytest.mark.parametrize("hw", [(120, 160), (180, 320), (8, 12)])
def test_output_is_a_probability_map_of_the_input_size(model, hw):
    x = torch.rand(2, model.spec.frames, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, *hw)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_sizes_off_the_stride_are_refused():
    check_input_size(120, 160)
    with pytest.raises(ValueError, match="multiple of the network stride 4"):
        check_input_size(121, 160)
    assert STRIDE == 4


def test_global_gain_and_offset_do_not_change_the_output(model):
    # standardise() removes each frame's mean and the window's contrast: a uniformly
    # brighter or dimmer scene (or one flat veil of haze) gives the same probabilities
    x = torch.rand(1, 8, 32, 48) * 0.5
    with torch.no_grad():
        a = model(x)
        b = model(x * 1.6 + 0.2)
    assert torch.allclose(a, b, atol=1e-3)  # only the contrast floor (eps) is not scaled


def test_per_frame_illumination_step_is_cancelled_by_standardisation():
    x = torch.rand(1, 8, 16, 16)
    stepped = x.clone()
    stepped[:, 4:] += 0.3  # the lights come on halfway through the window
    assert torch.allclose(standardise(x), standardise(stepped), atol=1e-4)


@pytest.mark.parametrize("frames", [8, 5])
def test_benet_starts_from_the_temporal_median(frames):
    # with the learned correction zeroed, BENet's background is the median of the window
    benet = MSFgNet(MsfgnetSpec(frames=frames)).benet
    for p in benet.mix[-1].parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, frames, 4, 4)
    assert torch.allclose(benet(sort_over_time(x)), x.median(dim=1, keepdim=True).values
                          if frames % 2 else torch.quantile(x, 0.5, dim=1, keepdim=True))


def test_size_accounting():
    m = build()
    assert count_parameters(m) == 29730           # the value documented in docs/models.md
    assert count_macs(m, 120, 160) == 50_534_400  # 160x120: the working size of a 320x240 frame
    assert count_macs(m, 180, 320) == 151_418_880
    narrow = MSFgNet(MsfgnetSpec(wide_context=False))
    assert count_parameters(narrow) == 20482 and narrow.fgnet.wide is None


def test_spec_changes_shapes():
    small = MSFgNet(MsfgnetSpec(frames=4, enc2=16))
    assert small.benet.mix[0].in_channels == 4
    x = torch.rand(1, 4, 44, 60)  # 1/4 is 11x15: the 1/8 context branch must cope with odd sizes
    assert small(x).shape == (1, 1, 44, 60)
    with pytest.raises(ValueError, match="at least 2 frames"):
        MSFgNet(MsfgnetSpec(frames=1))


def test_onnx_export_has_dynamic_size_and_matches_torch(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from training.train_msfgnet import export_onnx

    path = export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (spec,) = session.get_inputs()
    assert spec.name == "frames" and spec.shape[1] == 8
    for hw in [(120, 160), (48, 80)]:
        x = np.random.default_rng(1).random((2, 8, *hw), dtype=np.float32)
        got = session.run(None, {"frames": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-5
