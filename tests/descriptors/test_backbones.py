import pytest
import torch
from torch import nn

from descriptors.backbones import BACKBONES, WeightsUnavailableError, _use_reflection_padding, load_backbone


def test_default_backbone_offline_classifies_real_photos(default_backbone, sample_photos):
    # The packaged weights must be ImageNet weights mapped correctly: chelsea is a cat
    # (ImageNet 281-285), coffee an espresso (967).
    model = default_backbone
    for name, expected in (("chelsea", range(281, 286)), ("coffee", (967, 968, 504))):
        x = model.preprocess(sample_photos[name], 224)[None]
        with torch.inference_mode():
            logits = model.trunk.model.forward_head(model.forward(x))
        assert logits.argmax().item() in expected, name


def test_default_backbone_map_shape_and_relu6(default_backbone, sample_photos):
    img = sample_photos["coffee"]  # 600 x 400
    x = default_backbone.preprocess(img, 128)
    assert x.shape == (3, 128, 192)
    (act,) = default_backbone.extract([x])
    assert act.shape == (1280, 4, 6)
    assert act.min() >= 0 and act.max() <= 6.0
    assert len(default_backbone.weights_sha256) == 64


def test_extract_mixed_sizes_keeps_order(default_backbone, sample_photos):
    xs = [default_backbone.preprocess(sample_photos[n], s) for n, s in (("coffee", 96), ("chelsea", 64), ("coffee", 96))]
    acts = default_backbone.extract(xs)
    assert [tuple(a.shape[-2:]) for a in acts] == [(3, 5), (2, 3), (3, 5)]
    assert torch.allclose(acts[0], acts[2], atol=1e-5)
    assert acts[0].shape != acts[1].shape


@pytest.mark.parametrize("name", ["efficientnet-lite0", "vgg16"])  # mean/std 0.5 and ImageNet's
def test_preprocess_table_lookup_equals_the_torch_normalization(name, sample_photos):
    """The lookup table (numpy, run in decode threads) gives bit for bit what the torch ops gave."""
    import numpy as np
    from PIL import Image

    from descriptors.backbones import normalize_pixels, normalized_levels, resize_for_backbone

    spec = BACKBONES[name]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    levels = normalized_levels(spec.mean, spec.std)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    for image in (sample_photos["chelsea"], sample_photos["astronaut"].convert("L"), noise):
        rgb = np.asarray(resize_for_backbone(image, 96).convert("RGB"), dtype=np.uint8)
        want = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0) - mean) / std
        got = normalize_pixels(rgb, levels)
        assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, want)


def test_preprocess_caps_panoramas(default_backbone):
    from PIL import Image

    x = default_backbone.preprocess(Image.new("RGB", (4000, 100)), 64)
    assert x.shape[1] * default_backbone.max_side_ratio * 64 >= x.shape[2]
    assert x.shape[2] == 192


def test_unknown_backbone_lists_names():
    with pytest.raises(KeyError, match="efficientnet-lite0"):
        load_backbone("alexnet")


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_missing_weights_file_is_a_clear_error(name, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_backbone(name, weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_torchvision_backbones_load_from_a_weights_path(name, tmp_path):
    # Random weights saved in torchvision's format stand in for the ImageNet checkpoint.
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone(name, weights=str(path))
    spec = BACKBONES[name]
    (act,) = backbone.extract([torch.randn(3, 64, 96)])
    assert act.shape == (spec.channels, 64 // spec.stride, 96 // spec.stride)
    assert act.min() >= 0  # a ReLU output


def test_reflection_padding_replaces_every_zero_padding():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)))
    _use_reflection_padding(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pads = [m for m in model.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert all(c.padding == (0, 0) for c in convs) and len(pads) == 2
    # a constant image stays constant at the border with reflection (no zero-padding frame)
    for c in convs:
        nn.init.constant_(c.weight, 1.0)
        nn.init.zeros_(c.bias)
    out = model(torch.ones(1, 3, 8, 8))
    assert torch.allclose(out, out[0, 0, 0, 0].expand_as(out))


@pytest.mark.parametrize(("size", "image_size", "ratio"), [((1024, 768), 320, 3.0), ((768, 1024), 320, 3.0),
                                                          ((853, 640), 96, 3.0), ((64, 64), 320, 3.0),
                                                          ((4000, 100), 64, 3.0), ((37, 53), 96, 2.0)])
def test_resize_is_pil_bilinear_up_to_rounding(size, image_size, ratio, sample_photos):
    """The backbone's resize (torch's uint8 antialiased bilinear) gives PIL's ``resize(BILINEAR)``
    up to one level of rounding in a few values, and exactly when enlarging by a whole factor
    (Tiny-ImageNet's 64 px images to 320)."""
    import numpy as np
    from PIL import Image

    from descriptors.backbones import backbone_input_size, resized_pixels

    image = sample_photos["chelsea"].resize(size, Image.BICUBIC)
    got = resized_pixels(image, image_size, ratio)
    want_size = backbone_input_size(*size, image_size, ratio)
    want = np.asarray(image.resize(want_size, Image.BILINEAR, reducing_gap=None)).astype(int)
    assert got.dtype == np.uint8 and got.shape == (want_size[1], want_size[0], 3)
    difference = np.abs(got.astype(int) - want)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    if want_size[0] % size[0] == 0 and want_size[1] % size[1] == 0:  # enlarged by a whole factor
        assert difference.max() == 0
    # grey and palette images give the RGB of their conversion
    grey = image.convert("L")
    assert np.array_equal(resized_pixels(grey, image_size, ratio), resized_pixels(grey.convert("RGB"), image_size, ratio))
