import math

import pytest
import torch

from descriptors.crow import crow_channel_weights, crow_spatial_weights
from descriptors.pooling import crow, gem, mac, rmac_region_vectors, rmac_regions, spoc


def _example() -> torch.Tensor:
    return torch.tensor(
        [
            [[1.0, 0.0], [2.0, 0.0]],
            [[1.0, 1.0], [1.0, 1.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )


def test_mac_spoc_gem_hand_values():
    A = _example()
    assert mac(A).tolist() == [2.0, 1.0, 0.0]
    assert spoc(A).tolist() == [0.75, 1.0, 0.0]
    # GeM p=3 on channel 0: ((1 + 8 + 2 eps³) / 4) ** (1/3) = 2.25 ** (1/3) = 1.3103707
    assert gem(A, p=3.0).tolist() == pytest.approx([1.3103707, 1.0, 1e-6], abs=1e-6)
    assert torch.allclose(gem(A, p=1.0, eps=1e-12), spoc(A))


def test_crow_pooling_hand_value():
    # S = [[0.7186082, 0.5081327], [0.8801117, 0.5081327]], w = (log 3, log 1.5, 0)
    # channel 0: (1*0.7186082 + 2*0.8801117) * log 3; channel 1: (sum of S) * log 1.5
    A = _example()
    expected = [
        (0.7186082 + 2 * 0.8801117) * 1.0986123,
        (0.7186082 + 0.5081327 + 0.8801117 + 0.5081327) * 0.4054651,
        0.0,
    ]
    assert crow(A).tolist() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(crow(A), (A * crow_spatial_weights(A)).sum(dim=(1, 2)) * crow_channel_weights(A))


def test_rmac_regions_on_a_3x4_map_written_out():
    # short side 3, long side 4: overlap closest to 0.4 with 2 regions along the long side
    # level 1: side 3, x starts 0, 1; level 2: side 2, 3 x 2 grid; level 3: side 1, 4 x 3 grid
    expected = [(0, 0, 4, 3)]  # the whole map (cirtorch's first vector)
    expected += [(0, 0, 3, 3), (1, 0, 4, 3)]
    expected += [(x, y, x + 2, y + 2) for y in (0, 1) for x in (0, 1, 2)]
    expected += [(x, y, x + 1, y + 1) for y in (0, 1, 2) for x in (0, 1, 2, 3)]
    assert rmac_regions(3, 4) == expected
    assert rmac_regions(3, 4, include_full=False) == expected[1:]


def _cirtorch_regions(H: int, W: int, L: int = 3) -> list[tuple[int, int, int, int]]:
    """A transcription of cirtorch's functional.rmac region loop (torch float32 arithmetic)."""
    ovr = 0.4
    steps = torch.Tensor([2, 3, 4, 5, 6, 7])
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    _, idx = torch.min(torch.abs(((w**2 - w * b) / w**2) - ovr), 0)
    Wd = idx.item() + 1 if H < W else 0
    Hd = idx.item() + 1 if H > W else 0
    out = [(0, 0, W, H)]
    for level in range(1, L + 1):
        wl = math.floor(2 * w / (level + 1))
        wl2 = math.floor(wl / 2 - 1)
        b = 0 if level + Wd == 1 else (W - wl) / (level + Wd - 1)
        cenW = torch.floor(wl2 + torch.Tensor(range(level - 1 + Wd + 1)) * b) - wl2
        b = 0 if level + Hd == 1 else (H - wl) / (level + Hd - 1)
        cenH = torch.floor(wl2 + torch.Tensor(range(level - 1 + Hd + 1)) * b) - wl2
        for i_ in cenH.tolist():
            for j_ in cenW.tolist():
                if wl == 0:
                    continue
                out.append((int(j_), int(i_), int(j_) + wl, int(i_) + wl))
    return out


@pytest.mark.parametrize(("h", "w"), [(16, 21), (21, 16), (16, 16), (3, 4), (7, 30), (1, 5)])
def test_rmac_regions_match_the_published_algorithm(h, w):
    regions = rmac_regions(h, w)
    assert regions == _cirtorch_regions(h, w)
    assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in regions)


def test_rmac_regions_on_a_16x21_map_written_out():
    # by hand: short 16, long 21; overlap |0.6 - b/16| is smallest for b = 5 (2 regions at level 1),
    # so one extra region along x at every level.
    # level 1: side 16, half 7, x step 5 -> x0 = 0, 5
    # level 2: side 10, half 4, x step 5.5 -> floor(4 + 5.5 i) - 4 = 0, 5, 11; y step 6 -> 0, 6
    # level 3: side 8, half 3, x step 13/3 -> floor(3 + 4.33 i) - 3 = 0, 4, 8, 13; y step 4 -> 0, 4, 8
    expected = [(0, 0, 21, 16)]
    expected += [(x, 0, x + 16, 16) for x in (0, 5)]
    expected += [(x, y, x + 10, y + 10) for y in (0, 6) for x in (0, 5, 11)]
    expected += [(x, y, x + 8, y + 8) for y in (0, 4, 8) for x in (0, 4, 8, 13)]
    assert rmac_regions(16, 21) == expected


def test_rmac_region_vectors_are_per_region_max():
    A = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    vectors = rmac_region_vectors(A)
    regions = rmac_regions(3, 4)
    assert vectors.shape == (len(regions), 2)
    for (_, _, x1, y1), row in zip(regions, vectors, strict=True):
        # arange grows along x then y, so a region's max sits at its bottom-right cell
        assert row.tolist() == [float(A[c, y1 - 1, x1 - 1]) for c in range(2)]


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        mac(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="positive int"):
        rmac_regions(0, 4)
