"""RI-GAN model, losses and synthetic data: shapes, any-size padding, SSIM vs skimage, finiteness."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from skimage.metrics import structural_similarity  # noqa: E402

from pipeline.errors import PipelineError, SourceError  # noqa: E402
from training.data.dehaze import (  # noqa: E402
    ClearImage, HazeParams, SynthHazeDataset, composite_sky, generic_depth, read_image, read_pair,
    road_scene_depth, room_depth, synthesize, to_bgr8,
)
from training.losses.dehaze import LossWeights, d_loss, edge_loss, generator_loss, ssim  # noqa: E402
from training.models.rigan import (  # noqa: E402
    STRIDE, RIDiscriminator, RIGenerator, conv_macs, count_params, dehaze_any_size, generator_shape,
)
from training.train_rigan import NonFiniteLoss, check_finite  # noqa: E402

torch.set_num_threads(1)


def _random_generator(width=8, blocks=1, seed=0) -> RIGenerator:
    torch.manual_seed(seed)
    g = RIGenerator(width, blocks).eval()
    torch.nn.init.normal_(g.out.weight, std=0.05)  # the fresh init is near the identity; make it do something
    return g


def test_generator_and_discriminator_shapes():
    g, d = RIGenerator(8, 2), RIDiscriminator(8)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert d(x, y).shape == (2, 1, 8, 12)  # one logit per 8x8 patch
    assert generator_shape(g.state_dict()) == (8, 2)


def test_fresh_generator_is_a_mild_dehaze():
    """Untrained: t ~ 0.82 and A ~ 0.85 everywhere, so J = (I - A) / 0.82 + A (a small contrast stretch)."""
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = RIGenerator(8, 1)(x)
    a = torch.sigmoid(torch.tensor(1.7))
    expected = torch.clamp((x - a) / torch.sigmoid(torch.tensor(1.5)) + a, 0, 1)
    assert float((y - expected).abs().max()) < 1e-5


def test_generator_inverts_the_scattering_model_with_its_t_and_a():
    """With t and A forced, the head is exactly J = (I - A) / t + A (the pipeline/haze.py model inverted)."""
    from pipeline.haze import apply_haze

    g = RIGenerator(8, 1).eval()
    with torch.no_grad():
        g.out.bias.fill_(torch.logit(torch.tensor(0.5)).item())       # t = 0.5 everywhere
        g.airlight.bias.fill_(torch.logit(torch.tensor(0.8)).item())  # A = 0.8
    clear = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32) * 0.6
    hazy = apply_haze(clear, np.full((16, 16), 0.5, np.float32), 0.8)
    with torch.no_grad():
        out = g(torch.from_numpy(hazy).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(out - clear).max() < 1e-5


@pytest.mark.parametrize("h,w", [(37, 53), (5, 7), (64, 64), (1, 3)])
def test_any_size_is_padded_and_cropped_back(h, w):
    g = _random_generator()
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        y = dehaze_any_size(g, x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_params_and_macs_are_counted():
    g = RIGenerator(16, 4)
    assert count_params(g) == sum(p.numel() for p in g.parameters()) > 100_000
    macs = conv_macs(g, (1, 3, 360, 640))
    assert 1e9 < macs < 2e10  # a few GMAC per 640x360 frame at the CPU width
    assert conv_macs(g, (1, 3, 180, 320)) == pytest.approx(macs / 4, rel=0.01)


def test_ssim_matches_skimage():
    rng = np.random.default_rng(3)
    a = rng.random((48, 40, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    b[10:30, 5:25] = 0.5 * b[10:30, 5:25] + 0.3  # structured change, not only noise
    ref = structural_similarity(a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    ours = ssim(torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(b).permute(2, 0, 1)[None])
    assert abs(float(ours) - ref) < 1e-5
    same = torch.from_numpy(a).permute(2, 0, 1)[None]
    assert float(ssim(same, same)) == pytest.approx(1.0, abs=1e-6)


def test_losses_are_finite_and_backpropagate():
    g, d = _random_generator(), RIDiscriminator(8)
    hazy, clear = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = g(hazy)
    total, parts = generator_loss(d(hazy, out), out, clear, LossWeights())
    assert set(parts) == {"l1", "ssim", "edge", "adv"}
    assert all(np.isfinite(v) for v in parts.values())
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in g.parameters() if p.grad is not None)
    ld = d_loss(d(hazy, clear), d(hazy, out.detach()))
    assert torch.isfinite(ld) and float(ld.detach()) > 0
    assert float(edge_loss(clear, clear)) == 0.0


def test_nan_guard_names_the_loss():
    check_finite(torch.tensor(1.0), "generator", 3)
    with pytest.raises(NonFiniteLoss, match="generator loss is nan") as e:
        check_finite(torch.tensor(float("nan")), "generator", 7)
    assert isinstance(e.value, PipelineError) and "iteration 7" in e.value.input


def test_depth_families_are_finite_and_deterministic():
    for fn in (road_scene_depth, generic_depth, room_depth):
        a = fn(60, 80, np.random.default_rng(5))
        b = fn(60, 80, np.random.default_rng(5))
        assert a.shape == (60, 80) and np.isfinite(a).all() and np.array_equal(a, b)


def test_synthesis_is_deterministic_and_hazes():
    rng = np.random.default_rng(0)
    img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    pool = [ClearImage(img, "road", "test"), ClearImage(img[:, ::-1].copy(), "generic", "test", group=1)]
    ds = SynthHazeDataset(pool, patch=64, length=8, seed=4, short_side=(64, 96))
    h1, c1 = ds.pair(3)
    h2, c2 = ds.pair(3)
    assert np.array_equal(h1, h2) and np.array_equal(c1, c2) and h1.shape == (64, 64, 3)
    hazy, clear = ds[5]
    assert hazy.shape == clear.shape == (3, 64, 64) and hazy.dtype == torch.float32
    depth = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (96, 1))
    strong = HazeParams(beta=(2.8, 2.8), near=(0.0, 0.0), clear_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, tint_prob=0.0,
                        nonhomogeneous_prob=0.0, airlight=(0.9, 0.9))
    hazy = synthesize(img, depth, np.random.default_rng(1), strong)
    # haze lifts contrast towards A: the far side has less spread than the near side
    assert hazy[:, -10:].std() < 0.3 * hazy[:, :10].std()


def test_composited_sky_sets_the_airlight_and_is_left_unhazed():
    rng = np.random.default_rng(3)
    img = (rng.random((120, 160, 3)) * 120).astype(np.uint8)  # dark clutter, no sky of its own
    params = HazeParams(sky_prob=1.0, clear_prob=0.0, noise_prob=0.0, jpeg_prob=0.0, beta=(2.8, 2.8))
    out, sky, airlight = composite_sky(img, np.random.default_rng(7), params)
    assert sky.any() and not sky.all()
    # the sky hangs from the top edge: in every column it is a run of rows starting at row 0
    first_ground = np.argmin(sky, axis=0)
    assert all(not sky[r:, c].any() for c, r in enumerate(first_ground))
    assert np.array_equal(out[~sky], img[~sky])
    sky_bgr = out[sky].astype(np.float32) / 255.0
    assert np.abs(sky_bgr.max(axis=0) - airlight).max() < 0.03  # A is the sky's brightest colour
    depth = np.full(sky.shape, 0.3, np.float32)
    hazy = synthesize(out, depth, np.random.default_rng(2), params, airlight=airlight, keep=sky)
    # dense haze lifts the ground towards A; the sky is left exactly as it was
    change = np.abs(hazy.astype(np.float32) - out.astype(np.float32)) / 255.0
    assert change[sky].max() == 0.0 and change[~sky].mean() > 0.2
    ds = SynthHazeDataset([ClearImage(img, "road", "t")], patch=64, length=4, seed=1, short_side=(64, 96),
                          params=params)
    assert np.array_equal(ds.pair(2)[0], ds.pair(2)[0])


def test_rendered_rooms_have_exact_depth_and_crop_consistently():
    from training.data.rooms import render_room

    rng = np.random.default_rng(0)
    textures = [(rng.random((80, 90, 3)) * 255).astype(np.uint8)]
    image, depth, farthest = render_room(60, 80, np.random.default_rng(4), textures)
    again = render_room(60, 80, np.random.default_rng(4), textures)
    assert np.array_equal(image, again[0]) and np.array_equal(depth, again[1])
    assert image.shape == (60, 80, 3) and image.dtype == np.uint8 and image.std() > 5
    assert np.isfinite(depth).all() and depth.min() > 0 and depth.max() <= farthest
    # a window of the camera's picture has the same geometry as that crop of the whole picture
    window, wdepth, _ = render_room(24, 32, np.random.default_rng(4), textures, full=(60, 80), offset=(10, 30))
    np.testing.assert_allclose(wdepth, depth[10:34, 30:62], rtol=1e-5)
    # the dataset draws whole pairs of rooms among the other sources
    pool = [ClearImage(textures[0], "road", "t"), ClearImage(None, "room", "rooms", group=1)]
    ds = SynthHazeDataset(pool, patch=32, length=8, seed=2, short_side=(40, 60))
    kinds = []
    for i in range(8):
        hazy, clear = ds.pair(i)
        assert hazy.shape == clear.shape == (32, 32, 3)
        kinds.append(np.random.default_rng([2, 0, i]).integers(2))
    assert 0 < sum(kinds) < 8


def test_image_conversions_and_bad_files(tmp_path):
    grey = np.full((20, 30), 100, np.uint8)
    assert to_bgr8(grey).shape == (20, 30, 3)
    assert to_bgr8(np.zeros((20, 30, 4), np.uint8)).shape == (20, 30, 3)
    deep = to_bgr8(np.full((20, 30, 3), 65535, np.uint16))
    assert deep.dtype == np.uint8 and deep.max() == 255
    with pytest.raises(SourceError, match="smaller than"):
        to_bgr8(np.zeros((8, 8, 3), np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SourceError, match="cannot decode"):
        read_image(bad)
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((20, 32, 3), np.uint8))
    with pytest.raises(SourceError, match="differs"):
        read_pair(tmp_path / "a.png", tmp_path / "b.png")
