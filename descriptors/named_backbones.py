"""Any timm or torchvision CNN as a backbone, by name: `timm:NAME`, `torchvision:NAME`.

The layer rule (one rule for both libraries):

1. The feature map is the network's last spatial map before global pooling: timm's
   `forward_features`; torchvision's `features` trunk when the model has one (VGG, MobileNet,
   EfficientNet, ConvNeXt, DenseNet, ...), else every child before `avgpool` (ResNet, ResNeXt,
   RegNet, Wide-ResNet). Trailing max-pools of a torchvision trunk are dropped (the thesis's
   VGG-16 conv5_3: a finer grid for the NMF).
2. The map must be non-negative, because the NMF factorizes it: the last module that runs to
   produce it, skipping sign-preserving ones (max-pool, identity, dropout), must be ReLU-like
   (`ReLU`, `ReLU6`, `Hardtanh` with a lower bound >= 0). A network whose map ends in SiLU /
   GELU / Hardswish / a normalization (EfficientNet-B*, MobileNetV3, ConvNeXt, DenseNet's
   functional ReLU) is refused with a message naming that module. A random-input probe then
   checks the minimum is >= 0.

Weights: `weights=None` takes the library's pretrained ImageNet weights through its own cache
(timm: the Hugging Face hub cache; torchvision: the torch hub cache), downloading them on a
miss; `weights=PATH` loads a state dict file; `weights="random"` builds the network with seeded
random weights (tests and shape checks only). `weights_sha256` is a digest of the state dict's
tensors, so that an index records which weights made its vectors whatever the file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from .settings import NAMED_LIBRARIES, NAMED_RETRIEVAL_IMAGE_SIZE, is_named  # noqa: F401  (re-exported)

LIBRARIES = NAMED_LIBRARIES
RANDOM_WEIGHTS = "random"
# the efficientnet-lite0 scale study (docs/results.md): 320 px, 1.43x its 224-px training size,
# beat 224-512 for every method; a named backbone trained at 224 px starts from the same ratio
_SIGN_PRESERVING = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.Dropout2d)
_PROBE_SIZE = 128


class LayerRuleError(ValueError):
    """The named network's feature map is not guaranteed non-negative (the NMF needs it)."""


@dataclass(frozen=True)
class NamedBackbone:
    """What `load_backbone` needs from a named network: trunk, geometry, normalization."""

    trunk: nn.Module
    layer: str
    channels: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # the weights' origin (file path, hub id, or "random")
    weights_sha256: str


def split_name(name: str) -> tuple[str, str]:
    library, sep, model = name.partition(":")
    if not sep or library not in LIBRARIES or not model:
        raise KeyError(f"backbone {name!r}: expected timm:NAME or torchvision:NAME")
    return library, model


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _load_state(model: nn.Module, path: str, name: str) -> None:
    from .backbones import WeightsUnavailableError

    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"{name}: weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsUnavailableError(f"{name}: {path} does not fit the network: {error}") from None


def _timm(model_name: str, weights: str | None, full: str) -> tuple[nn.Module, tuple, tuple, str]:
    import timm

    from .backbones import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError

    if not timm.is_model(model_name):
        raise KeyError(f"unknown timm model {model_name!r} (timm.list_models() lists them)")
    pretrained = weights is None
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except Exception as error:  # hub errors: offline, no such pretrained tag, HTTP
        if not pretrained:
            raise
        raise WeightsUnavailableError(
            f"{full}: pretrained weights are not in the Hugging Face cache and could not be downloaded "
            f"({type(error).__name__}: {error}); pass --weights PATH (a state dict file)"
        ) from error
    if weights not in (None, RANDOM_WEIGHTS):
        _load_state(model, weights, full)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    origin = weights or f"timm:{cfg.get('hf_hub_id') or cfg.get('url') or model_name}"
    return _TimmFeatures(model), mean, std, origin


def _torchvision(model_name: str, weights: str | None, full: str) -> tuple[nn.Module, tuple, tuple, str]:
    import torchvision

    from .backbones import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError

    if model_name not in torchvision.models.list_models(module=torchvision.models):
        raise KeyError(f"unknown torchvision classification model {model_name!r} (torchvision.models.list_models())")
    origin = weights or ""
    if weights is None:
        enum = torchvision.models.get_model_weights(model_name).DEFAULT
        origin = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
        try:
            model = torchvision.models.get_model(model_name, weights=enum)
        except Exception as error:
            raise WeightsUnavailableError(
                f"{full}: ImageNet weights are not in the torch cache and could not be downloaded "
                f"({type(error).__name__}: {error}). Place {os.path.basename(enum.url)} at {origin}, "
                "or pass --weights PATH."
            ) from error
    else:
        model = torchvision.models.get_model(model_name, weights=None)
        if weights != RANDOM_WEIGHTS:
            _load_state(model, weights, full)
    return _torchvision_trunk(model, full), IMAGENET_MEAN, IMAGENET_STD, origin


def _torchvision_trunk(model: nn.Module, full: str) -> nn.Module:
    if isinstance(getattr(model, "features", None), nn.Module):
        trunk = model.features
    else:
        names = [n for n, _ in model.named_children()]
        if "avgpool" not in names:
            raise LayerRuleError(f"{full}: no `features` trunk and no `avgpool` to cut before; not a supported CNN")
        trunk = nn.Sequential(*[c for n, c in model.named_children()][: names.index("avgpool")])
    if isinstance(trunk, nn.Sequential):
        children = list(trunk)
        while children and isinstance(children[-1], nn.MaxPool2d):
            children.pop()  # the thesis's VGG rule: no trailing pooling, a finer grid
        trunk = nn.Sequential(*children)
    return trunk


def _relu_like(module: nn.Module) -> bool:
    if isinstance(module, nn.ReLU | nn.ReLU6):
        return True
    return isinstance(module, nn.Hardtanh) and module.min_val >= 0


def _last_activation(trunk: nn.Module, probe: torch.Tensor) -> tuple[str, nn.Module, torch.Tensor]:
    """(qualified name, module) of the last leaf module run, sign-preserving ones skipped; the map."""
    order: list[tuple[str, nn.Module]] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append((name, m)))
        for name, module in trunk.named_modules()
        if not list(module.children())
    ]
    try:
        with torch.inference_mode():
            out = trunk(probe)
    finally:
        for handle in handles:
            handle.remove()
    for name, module in reversed(order):
        if not isinstance(module, _SIGN_PRESERVING):
            return name, module, out
    raise LayerRuleError("the trunk runs no module")


def build_named(name: str, weights: str | None = None) -> NamedBackbone:
    """Build `timm:NAME` / `torchvision:NAME` truncated at its last feature map, checked by the
    layer rule (module docstring). Raises KeyError (unknown name), LayerRuleError (map can be
    negative), `WeightsUnavailableError` (weights neither cached nor downloadable nor at PATH)."""
    library, model_name = split_name(name)
    if weights == RANDOM_WEIGHTS:
        torch.manual_seed(0)  # reproducible random weights (tests)
    build = _timm if library == "timm" else _torchvision
    trunk, mean, std, origin = build(model_name, weights, name)
    trunk = trunk.eval()
    probe = torch.rand(1, 3, _PROBE_SIZE, _PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    layer, module, out = _last_activation(trunk, (probe - 0.5) / 0.25)
    if not _relu_like(module):
        raise LayerRuleError(
            f"{name}: its last feature map ends in {type(module).__name__} ({layer}), which can be negative; "
            "the NMF needs a non-negative (ReLU-like: ReLU, ReLU6) map. Choose a network whose last stage "
            "ends in a ReLU (ResNet, VGG, RegNet, MobileNetV2, EfficientNet-Lite, ...)"
        )
    if out.dim() != 4 or float(out.min()) < 0:
        raise LayerRuleError(f"{name}: the map at {layer} is not a non-negative (B, C, h, w) tensor")
    stride = max(1, round(_PROBE_SIZE / out.shape[-1]))
    return NamedBackbone(trunk, layer, int(out.shape[1]), stride, mean, std, origin, state_sha256(trunk))


def state_sha256(module: nn.Module) -> str:
    """Digest of a module's state dict (names, shapes, dtypes and values, in order)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()
