"""Tiny synthetic datasets in the official layouts, and where the shared data lives."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    return Path(os.environ.get("DFF_SHARED_DATA", REPO.parent / "shared" / "data"))


def pattern_image(kind: str, seed: int, size: int = 96) -> Image.Image:
    """A textured image per 'landmark' kind; the seed shifts, rescales and adds noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = 10 + rng.uniform(-1.5, 1.5)
    phase = rng.uniform(0, period)
    if kind == "checker":
        base = ((xx + phase) // period + (yy + phase) // period) % 2
        rgb = np.stack([base, base * 0.2, 0.1 + 0 * base], -1)
    elif kind == "stripes":
        base = (np.sin((xx + yy + phase) / period * 2 * np.pi) > 0).astype(np.float32)
        rgb = np.stack([0.1 + 0 * base, base * 0.8, base], -1)
    elif kind == "rings":
        cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
        base = (np.sin(np.hypot(xx - cx, yy - cy) / period * 2 * np.pi) > 0).astype(np.float32)
        rgb = np.stack([base, base, 0.2 + 0 * base], -1)
    else:
        rgb = rng.uniform(0, 1, (size, size, 3)).astype(np.float32)
    rgb = np.clip(rgb + rng.normal(0, 0.05, rgb.shape), 0, 1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


LANDMARKS = ("checker", "stripes", "rings")


def write_instance_dataset(root: Path, n_per_landmark: int = 4, n_distractors: int = 3) -> dict:
    """Official Oxford/Paris layout: jpg/ + gt_files/*_{query,good,ok,junk}.txt + gnd_<ds>.pkl.

    Landmark L has images `paris_<L>_00000i`; query 1 of L is image 0 with a box covering the
    left 3/4; good = the other images of L; distractors `paris_general_*` are noise.
    """
    (root / "jpg").mkdir(parents=True)
    gt_dir = root / "gt_files"
    gt_dir.mkdir()
    names = []
    for li, landmark in enumerate(LANDMARKS):
        for i in range(n_per_landmark):
            name = f"paris_{landmark}_{i:06d}"
            pattern_image(landmark, seed=100 * li + i).save(root / "jpg" / f"{name}.jpg", quality=95)
            names.append(name)
    for i in range(n_distractors):
        name = f"paris_general_{i:06d}"
        pattern_image("noise", seed=1000 + i).save(root / "jpg" / f"{name}.jpg", quality=95)
        names.append(name)
    imlist = sorted(names)
    gnd, qimlist = [], []
    for landmark in sorted(LANDMARKS):  # the official order: by landmark name
        members = [f"paris_{landmark}_{i:06d}" for i in range(n_per_landmark)]
        query, box = members[0], (0.0, 0.0, 72.0, 96.0)
        (gt_dir / f"{landmark}_1_query.txt").write_text(f"{query} {' '.join(f'{v:f}' for v in box)}\n")
        (gt_dir / f"{landmark}_1_good.txt").write_text("\n".join(members[:-1]) + "\n")
        (gt_dir / f"{landmark}_1_ok.txt").write_text(members[-1] + "\n")
        (gt_dir / f"{landmark}_1_junk.txt").write_text("")
        qimlist.append(query)
        gnd.append({"bbx": list(box), "ok": sorted(imlist.index(m) for m in members), "junk": []})
    with (root / "gnd_paris6k.pkl").open("wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def write_class_folders(root: Path, n_per_class: int = 6) -> None:
    for ci, kind in enumerate(LANDMARKS):
        (root / kind).mkdir(parents=True)
        for i in range(n_per_class):
            pattern_image(kind, seed=500 + 10 * ci + i, size=64).save(root / kind / f"{kind}_{i}.png")


def write_tiny_imagenet(root: Path, n_per_class: int = 6) -> list[tuple[str, str, tuple[int, int, int, int]]]:
    """Tiny-ImageNet val layout; each image is noise with the class pattern pasted in a planted box."""
    (root / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(7)
    for ci, kind in enumerate(LANDMARKS):
        for i in range(n_per_class):
            name = f"val_{ci * n_per_class + i}.JPEG"
            canvas = pattern_image("noise", seed=900 + ci * 50 + i, size=64)
            w, h = int(rng.integers(28, 44)), int(rng.integers(28, 44))
            x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
            canvas.paste(pattern_image(kind, seed=700 + ci * 50 + i, size=64).resize((w, h)), (x0, y0))
            canvas.save(root / "images" / name, quality=95)
            rows.append((name, f"n0000000{ci}", (x0, y0, x0 + w - 1, y0 + h - 1)))
    (root / "val_annotations.txt").write_text(
        "".join(f"{n}\t{w}\t{b[0]}\t{b[1]}\t{b[2]}\t{b[3]}\n" for n, w, b in rows)
    )
    (root / "wnids.txt").write_text("".join(f"n0000000{ci}\n" for ci in range(len(LANDMARKS))))
    return rows
