"""Defaults that come from measurements (docs/results.md) and old manifests that predate them."""

import dataclasses

import pytest

from descriptors.backbones import BACKBONES, retrieval_image_size
from descriptors.pipeline import DescriptorConfig
from indexer.config import IndexConfig
from indexer.manifest import descriptor_config_from


def test_image_size_defaults_to_the_backbones_measured_size():
    assert IndexConfig().image_size == 320 == retrieval_image_size("efficientnet-lite0")
    assert IndexConfig(backbone="vgg16").image_size == 512  # unmeasured here: the design's 512
    assert IndexConfig(image_size=600).image_size == 600
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        IndexConfig(backbone="vgg19")
    with pytest.raises(KeyError, match="vgg19"):
        retrieval_image_size("vgg19")
    assert all(spec.retrieval_image_size >= 32 for spec in BACKBONES.values())


def test_a_manifest_without_the_newer_settings_reproduces_its_vectors():
    # written before gaussian_sigma_of_grid existed: its V·U rows used the fixed 13 x 13 kernel
    stored = dataclasses.asdict(DescriptorConfig())
    del stored["gaussian_sigma_of_grid"]
    config = descriptor_config_from({"descriptor": stored})
    assert config.gaussian_sigma_of_grid is None
    assert config.vu_gaussian((10, 14)) == (13, 2.0)
    # a manifest that records the setting keeps it
    current = descriptor_config_from({"descriptor": dataclasses.asdict(DescriptorConfig())})
    assert current == DescriptorConfig()
    # written before nmf_algorithm existed: multiplicative updates; HALS when recorded
    del stored["nmf_algorithm"]
    assert descriptor_config_from({"descriptor": stored}).nmf_algorithm == "mu"
    hals = dataclasses.asdict(DescriptorConfig(nmf_algorithm="hals"))
    assert descriptor_config_from({"descriptor": hals}).nmf_algorithm == "hals"


def test_the_nmf_solver_choice_decides_the_recorded_algorithm():
    assert IndexConfig().descriptor_config().nmf_algorithm == "mu"
    assert IndexConfig(nmf_solver="numba-hals").descriptor_config().nmf_algorithm == "hals"
    assert IndexConfig(nmf_solver="torch-sparse").descriptor_config().nmf_algorithm == "mu"
    with pytest.raises(ValueError, match="nmf_algorithm must be one of"):
        DescriptorConfig(nmf_algorithm="als")
