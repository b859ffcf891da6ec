"""Intermediate activations of a network by module name (forward hooks), shared by every command.

A layer is named as in ``module.named_modules()`` (``dff-analyze rank --list-layers`` prints
them). NMF needs non-negative input: a layer that is not followed by a ReLU inside its module
(e.g. an EfficientNet block's linear projection) is analysed through its positive part
``max(A, 0)``, what the next ReLU would pass on; `activation_matrix` says so in its result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_LAYERS", "activation_matrix", "capture_layers", "default_layers", "layer_names", "resolve_layers"]

# post-ReLU points spread over the depth of each registry backbone (`descriptors.backbones`);
# names are relative to `Backbone.trunk`
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    # BatchNormAct2d modules end with their ReLU6: the stem, each stage's first expansion, the head
    "efficientnet-lite0": (
        "model.bn1",
        "model.blocks.1.0.bn1",
        "model.blocks.2.0.bn1",
        "model.blocks.3.0.bn1",
        "model.blocks.4.0.bn1",
        "model.blocks.5.0.bn1",
        "model.blocks.6.0.bn1",
        "model.bn2",
    ),
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    "vgg16": ("3", "8", "15", "22", "29"),
    # the stem's ReLU and layer1..layer4 (each block ends with a ReLU)
    "resnet50": ("2", "4", "5", "6", "7"),
}


def default_layers(backbone_name: str) -> tuple[str, ...]:
    if backbone_name not in DEFAULT_LAYERS:
        raise ValueError(f"no default layers for {backbone_name!r}; pass --layers (see --list-layers)")
    return DEFAULT_LAYERS[backbone_name]


def layer_names(module: nn.Module) -> list[str]:
    """Every named submodule (what `capture_layers` accepts), in forward-definition order."""
    return [name for name, _ in module.named_modules() if name]


def resolve_layers(module: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(module.named_modules())
    unknown = [name for name in names if name not in modules or not name]
    if unknown:
        sample = ", ".join(layer_names(module)[:8])
        raise ValueError(
            f"unknown layer(s) {', '.join(map(repr, unknown))}; layers are submodule names such as "
            f"{sample}, ... (dff-analyze rank --list-layers prints all)"
        )
    return {name: modules[name] for name in names}


@torch.inference_mode()
def capture_layers(module: nn.Module, x: Tensor, names: Sequence[str], call=None) -> dict[str, Tensor]:
    """Run ``call(x)`` (default ``module(x)``) and return the outputs of the submodules ``names``
    as float32 tensors (detached copies, on the output's device)."""
    targets = resolve_layers(module, names)
    captured: dict[str, Tensor] = {}
    handles = []
    for name, target in targets.items():

        def hook(_mod, _inp, out, name=name):
            captured[name] = out.detach().float().contiguous().clone()

        handles.append(target.register_forward_hook(hook))
    try:
        (call or module)(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in captured]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
    return {name: captured[name] for name in names}


def activation_matrix(maps: Sequence[Tensor]) -> tuple[Tensor, bool]:
    """Maps ``(C, h, w)`` (or ``(B, C, h, w)``) -> rows ``(positions, C)``, stacked over the maps,
    clipped at 0; also whether anything was negative (the layer is not post-ReLU)."""
    rows = []
    for A in maps:
        A = A.unsqueeze(0) if A.dim() == 3 else A
        if A.dim() != 4:
            raise ValueError(f"activation_matrix: expected (C, h, w) or (B, C, h, w) maps, got {tuple(A.shape)}")
        rows.append(A.permute(0, 2, 3, 1).reshape(-1, A.shape[1]))
    X = torch.cat(rows)
    had_negative = bool((X < 0).any())
    return X.clamp_min(0.0), had_negative
