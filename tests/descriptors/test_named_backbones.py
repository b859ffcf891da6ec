"""`timm:NAME` / `torchvision:NAME` backbones: shapes with random weights, the layer rule's
refusals, and numbers through the registry's real efficientnet-lite0 weights."""

from __future__ import annotations

import pytest
import torch

from descriptors.backbones import WeightsUnavailableError, load_backbone, retrieval_image_size
from descriptors.named_backbones import LayerRuleError, is_named, state_sha256


@pytest.mark.parametrize(
    ("name", "channels", "stride"),
    [
        ("timm:resnet18", 512, 32),
        ("torchvision:resnet18", 512, 32),
        ("torchvision:vgg11", 512, 16),  # trailing max-pool dropped, as the thesis's VGG-16
        ("torchvision:mobilenet_v2", 1280, 32),
        ("timm:regnety_002", 368, 32),
    ],
)
def test_named_backbones_give_non_negative_maps_of_the_probed_shape(name, channels, stride, sample_photos):
    backbone = load_backbone(name, weights="random")
    assert (backbone.name, backbone.channels, backbone.stride) == (name, channels, stride)
    x = backbone.preprocess(sample_photos["coffee"], 128)  # 600 x 400 -> 192 x 128
    (act,) = backbone.extract([x])
    assert act.shape == (channels, 128 // stride, 192 // stride)
    assert act.min() >= 0 and act.max() > 0
    assert len(backbone.weights_sha256) == 64
    # seeded random weights: the same digest on every load (an index can be reopened)
    assert load_backbone(name, weights="random").weights_sha256 == backbone.weights_sha256


@pytest.mark.parametrize(
    ("name", "ends_in"),
    [
        ("timm:efficientnet_b0", "SiLU"),
        ("torchvision:mobilenet_v3_small", "Hardswish"),
        ("torchvision:densenet121", "BatchNorm2d"),  # its final ReLU is functional, outside `features`
        ("timm:convnext_atto", "Conv2d"),
    ],
)
def test_maps_that_can_be_negative_are_refused_naming_the_module(name, ends_in):
    with pytest.raises(LayerRuleError, match=rf"ends in {ends_in}.*non-negative"):
        load_backbone(name, weights="random")


def test_unknown_names_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown timm model 'no_such_net'"):
        load_backbone("timm:no_such_net", weights="random")
    with pytest.raises(KeyError, match="unknown torchvision"):
        load_backbone("torchvision:no_such_net", weights="random")
    with pytest.raises(KeyError, match="timm:NAME"):
        load_backbone("keras:resnet50")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_backbone("torchvision:resnet18", weights=str(tmp_path / "missing.pth"))
    assert is_named("timm:resnet50") and not is_named("timm:") and not is_named("resnet50")
    assert retrieval_image_size("torchvision:resnet50") == 320


def test_timm_name_with_the_registry_weights_gives_the_registry_numbers(default_backbone, sample_photos, tmp_path):
    # the registry's efficientnet-lite0 is timm's tf_efficientnet_lite0 with the packaged ImageNet
    # weights: loaded by name from the same tensors, it must give the same activations and digest
    state = {k: v for k, v in default_backbone.trunk.model.state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    named = load_backbone("timm:tf_efficientnet_lite0", weights=str(path))
    assert named.layer == "model.bn2.act" and named.channels == 1280 and named.stride == 32
    assert (named.mean, named.std) == (default_backbone.mean, default_backbone.std)
    x = default_backbone.preprocess(sample_photos["chelsea"], 160)
    expected = default_backbone.extract([x])[0]
    got = named.extract([named.preprocess(sample_photos["chelsea"], 160)])[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert named.weights_sha256 == state_sha256(named.trunk)
