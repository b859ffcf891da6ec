import pytest

from evaluation.cli import build_parser, config_from_args
from evaluation.config import EvalConfig


def test_instance_size_defaults_to_the_backbone_and_the_others_to_224(tmp_path):
    assert EvalConfig().image_size == 320
    assert EvalConfig(backbone="resnet50").image_size == 512
    root = str(tmp_path)
    parse = build_parser().parse_args
    assert config_from_args(parse(["instance", "--dataset", "paris6k", "--root", root])).image_size == 320
    assert config_from_args(parse(["semantic", "--dataset", "tiny-imagenet", "--root", root])).image_size == 224
    assert config_from_args(parse(["localize", "--dataset", "paris6k", "--root", root])).image_size == 224
    sized = parse(["instance", "--dataset", "paris6k", "--root", root, "--image-size", "512"])
    assert config_from_args(sized).image_size == 512
    with pytest.raises(ValueError, match="unknown backbone"):
        EvalConfig(backbone="nope")
