import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from descriptors.aggregate import aggregate_rows
from descriptors.pipeline import METHODS, DescriptorConfig, Extractor, local_descriptors
from descriptors.pooling import rmac_regions

C, H, W = 32, 6, 7


def _activations(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(C, H, W, generator=gen))


def _expected_rows(config: DescriptorConfig) -> int:
    if config.method == "rmac":
        return len(rmac_regions(H, W, levels=config.rmac_levels))
    return config.k if config.uses_nmf else 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method(method):
    config = DescriptorConfig(method=method, k=4, max_iter=100)
    base = _activations(0)
    gen = torch.Generator().manual_seed(100)
    perturbed = base * (1 + 0.05 * torch.rand(base.shape, generator=gen))
    different = _activations(1)
    rows = local_descriptors([base, perturbed, different], config)

    assert len(rows) == 3
    for r in rows:
        assert isinstance(r, np.ndarray) and r.dtype == np.float32
        assert r.shape == (_expected_rows(config), C)
        assert (r >= 0).all()  # activations, CroW weights and NMF factors are all non-negative
    again = local_descriptors([base, perturbed, different], config)
    assert all(np.array_equal(a, b) for a, b in zip(rows, again, strict=True))

    g_base, g_perturbed, g_different = (aggregate_rows(r, None) for r in rows)
    assert float(g_base @ g_perturbed) > float(g_base @ g_different)
    assert float(g_base @ g_perturbed) > 0.9


@pytest.mark.parametrize("method", ["nmf-v", "nmf-vu"])
def test_nmf_methods_keep_only_factors_in_the_grid_box(method):
    # two concepts: channels 0-7 on the left half, channels 8-15 on the right half
    A = torch.zeros(16, 8, 8)
    A[:8, :, :4] = 1.0 + torch.rand(8, 8, 4, generator=torch.Generator().manual_seed(0))
    A[8:, :, 4:] = 1.0 + torch.rand(8, 8, 4, generator=torch.Generator().manual_seed(1))
    config = DescriptorConfig(method=method, k=2, max_iter=200, crow_weighting=False)
    full, boxed = local_descriptors([A, A], config, [None, (0.0, 0.0, 4.0, 8.0)])
    assert full.shape == (2, 16) and boxed.shape == (1, 16)
    # the kept factor is the left concept; alone, its V·U row is its V row (Ū Ūᵀ = [[1]])
    (V_rows,) = local_descriptors([A], dataclasses.replace(config, method="nmf-v"))
    left = int(np.argmax(V_rows[:, :8].sum(axis=1) - V_rows[:, 8:].sum(axis=1)))
    assert np.allclose(boxed[0], V_rows[left], rtol=1e-5, atol=1e-6)
    assert boxed[0, :8].sum() > 10 * boxed[0, 8:].sum()
    if method == "nmf-vu":  # without the box, V·U mixes the two concepts' rows
        assert full[left, 8:].sum() > 10 * V_rows[left, 8:].sum()


def test_baselines_ignore_grid_boxes():
    config = DescriptorConfig(method="mac")
    A = _activations(3)
    (with_box,) = local_descriptors([A], config, [(0.0, 0.0, 2.0, 2.0)])
    (without,) = local_descriptors([A], config)
    assert np.array_equal(with_box, without)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "vlad", "unknown descriptor method"),
        ("k", 0, "k must be a positive int"),
        ("gaussian_size", 12, "odd"),
        ("box_threshold", 1.5, r"\[0, 1\]"),
        ("tol", -1.0, "tol"),
        ("gem_p", 0.0, "gem_p"),
        ("gaussian_sigma_of_grid", 0.0, "gaussian_sigma_of_grid"),
        ("gaussian_sigma_of_grid", float("nan"), "gaussian_sigma_of_grid"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        DescriptorConfig(**{field: value})


def test_config_defaults_match_the_architecture():
    fields = {f.name: f.default for f in dataclasses.fields(DescriptorConfig)}
    assert fields["k"] == 4 and fields["max_iter"] == 100 and fields["tol"] == 1e-4
    assert fields["gaussian_size"] == 13 and fields["gaussian_variance"] == 2.0
    assert fields["gaussian_sigma_of_grid"] == 0.5
    assert fields["box_threshold"] == 0.75 and fields["rmac_levels"] == 3 and fields["gem_p"] == 3.0


def _image(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def backbone():
    backbones = pytest.importorskip("descriptors.backbones")
    try:
        return backbones.load_backbone("efficientnet-lite0")
    except backbones.WeightsUnavailableError as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"efficientnet-lite0 weights absent: {exc}")


def test_extractor_with_the_embedded_backbone(backbone):
    config = DescriptorConfig(method="nmf-vu", k=3, max_iter=50)
    extractor = Extractor(backbone, config, image_size=64)
    images = [_image(0), _image(1, (64, 80))]
    acts = extractor.activations(images)
    assert [tuple(a.shape[:1]) for a in acts] == [(backbone.channels,)] * 2
    rows = extractor.local_rows(images)
    assert [r.shape for r in rows] == [(3, backbone.channels)] * 2
    # the cache path gives the same rows as the image path
    cached = extractor.rows_from_activations(acts, [img.size for img in images])
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(rows, cached, strict=True))
    boxed = extractor.local_rows(images, [(0, 0, 48, 64), None])
    assert 1 <= boxed[0].shape[0] <= 3 and boxed[1].shape == (3, backbone.channels)
    descriptor = extractor.global_descriptor(rows[0], None)
    assert descriptor.shape == (backbone.channels,) and float(np.linalg.norm(descriptor)) == pytest.approx(
        1.0
    )


def test_extractor_crops_the_image_for_baselines(backbone):
    extractor = Extractor(backbone, DescriptorConfig(method="gem"), image_size=64)
    image = _image(2, (128, 96))
    (boxed,) = extractor.local_rows([image], [(32, 16, 96, 80)])
    (cropped,) = extractor.local_rows([image.crop((32, 16, 96, 80))])
    assert np.allclose(boxed, cropped)
    with pytest.raises(ValueError, match="does not overlap"):
        extractor.local_rows([image], [(200, 200, 300, 300)])


def test_vu_gaussian_is_relative_to_the_grid_unless_fixed():
    assert DescriptorConfig().vu_gaussian((10, 14)) == (31, 25.0)
    assert DescriptorConfig().vu_gaussian((20, 28)) == (61, 100.0)
    fixed = DescriptorConfig(gaussian_sigma_of_grid=None)
    assert fixed.vu_gaussian((10, 14)) == (13, 2.0) == fixed.vu_gaussian((40, 60))


def test_nmf_vu_rows_follow_the_configured_gaussian():
    # two factors in opposite corners of a 10 x 14 map: the fixed 13 x 13 kernel keeps them apart
    # (rows = V), the grid-relative one (sigma 5 cells) mixes them
    A = torch.zeros(4, 10, 14)
    A[0, :3, :3] = 1.0
    A[1, 7:, 11:] = 1.0
    fixed = DescriptorConfig(method="nmf-vu", k=2, gaussian_sigma_of_grid=None, crow_weighting=False)
    relative = DescriptorConfig(method="nmf-vu", k=2, crow_weighting=False)
    (rows_fixed,) = local_descriptors([A], fixed)
    (rows_relative,) = local_descriptors([A], relative)
    cosine = lambda r: float(r[0] @ r[1] / np.linalg.norm(r[0]) / np.linalg.norm(r[1]))  # noqa: E731
    assert cosine(rows_fixed) < 1e-3
    assert cosine(rows_relative) > 0.2
