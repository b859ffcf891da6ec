"""The coupled-NMF case study: a small CNN trained on scikit-learn's digits (8 x 8 greyscale,
1,797 images, shipped with the package: runs offline) on a fraction of its training data.

The split is fixed (seeded, stratified: 1,200 train, 597 test); a fraction takes the first
``fraction x 1200`` images of one seeded permutation, so smaller training sets are subsets of
larger ones. Every fraction trains for the same number of epochs (so less data also means fewer
steps: "less trained", as in the study this reproduces); ``equal_steps`` instead scales the epochs
by ``1 / fraction`` so that every fraction takes the same number of gradient steps, which
separates "less data" from "less training".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DIGITS_LAYERS", "DigitsCNN", "DigitsSplit", "digits_blocks", "load_digits_split", "train_digits_cnn"]

DIGITS_LAYERS = ("relu1", "relu2", "relu3")


@dataclass
class DigitsSplit:
    train_x: Tensor  # (n, 1, 8, 8) in [0, 1]
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_digits_split(test_size: int = 597, seed: int = 0) -> DigitsSplit:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # the `analysis` extra
        raise RuntimeError("the digits case study needs scikit-learn: pip install 'dffsearch[analysis]'") from exc
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        x, data.target, test_size=test_size, random_state=seed, stratify=data.target
    )
    return DigitsSplit(
        torch.from_numpy(train_x), torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x), torch.from_numpy(test_y).long(),
    )


class DigitsCNN(nn.Module):
    """conv 3x3 (16) - ReLU - conv 3x3 (32) - ReLU - max-pool 2 - fc 64 - ReLU - fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


def train_digits_cnn(
    split: DigitsSplit,
    fraction: float,
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    equal_steps: bool = False,
    on_epoch: Callable[[int], None] | None = None,
) -> tuple[DigitsCNN, float]:
    """Train on the first ``fraction`` of the (seeded) training permutation; returns the model
    (eval mode) and its test accuracy."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction!r}")
    if equal_steps:
        epochs = round(epochs / fraction)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split.train_x), generator=generator)
    count = max(1, round(fraction * len(order)))
    x, y = split.train_x[order[:count]], split.train_y[order[:count]]
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(count, generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch)
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(split.test_x).argmax(1) == split.test_y).float().mean())
    return model, accuracy


def digits_blocks(model: nn.Module, images: Tensor, layers=DIGITS_LAYERS) -> dict[str, Tensor]:
    """The coupled NMF's blocks ``(features, n)``: the raw inputs, then each layer's activations."""
    from .layers import capture_layers

    maps = capture_layers(model, images, layers)
    blocks = {"input": images.flatten(1).T.contiguous()}
    blocks.update({name: A.flatten(1).T.contiguous() for name, A in maps.items()})
    return blocks
