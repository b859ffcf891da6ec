"""Class-level (semantic) retrieval datasets: PASCAL VOC 2010, Tiny-ImageNet val, class folders.

Every reader returns a `SemanticDataset`: the image files, the set of classes each image
contains, and the queries (5 per class, chosen deterministically: the class's candidates
ordered by the SHA-1 of their image id, first 5 — independent of file order and of other
classes). A database image is relevant to a query when it contains the query's class; the
query itself is left out of its own ranking.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from descriptors.images import iter_image_files
from evaluation.datasets.instance import Box

SEMANTIC_DATASETS = ("voc2010", "tiny-imagenet", "folders")
QUERIES_PER_CLASS = 5


class DatasetLayoutError(ValueError):
    """The dataset folder does not have the expected layout."""


@dataclass(frozen=True)
class SemanticQuery:
    index: int  # into SemanticDataset.images
    label: str
    box: Box | None


@dataclass
class SemanticDataset:
    name: str
    images: list[Path]
    labels: list[frozenset[str]]
    queries: list[SemanticQuery]
    boxes: list[Box | None]  # one ground-truth box per image where the dataset has one (localization)
    images_total: int = 0  # images the dataset lists (present or not), for the coverage line
    queries_total: int = 0  # queries a complete copy would give

    def relevant(self, query: SemanticQuery) -> set[int]:
        return {i for i, labels in enumerate(self.labels) if query.label in labels and i != query.index}


def choose_queries(candidates: list[str], n: int = QUERIES_PER_CLASS) -> list[str]:
    """Deterministic choice of `n` ids: ordered by SHA-1 of the id, first n."""
    return sorted(candidates, key=lambda c: hashlib.sha1(c.encode()).hexdigest())[:n]


# ---------------------------------------------------------------- Tiny-ImageNet


def load_tiny_imagenet(root: str | Path, queries_per_class: int = QUERIES_PER_CLASS) -> SemanticDataset:
    """Tiny-ImageNet val: `images/*.JPEG` + `val_annotations.txt` (file, wnid, xmin, ymin, xmax, ymax).

    Boxes in the file are inclusive pixel coordinates; we store (xmin, ymin, xmax + 1, ymax + 1)
    (exclusive ends, the package convention). Query box = the image's annotated box.
    """
    root = Path(root)
    annotations = root / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetLayoutError(
            f"{annotations} missing; expected Tiny-ImageNet val (images/ + val_annotations.txt)"
        )
    images, labels, boxes, by_class = [], [], [], {}
    listed: dict[str, int] = {}
    for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DatasetLayoutError(f"{annotations}:{line_no}: expected 6 fields, got {len(fields)}")
        path = root / "images" / fields[0]
        listed[fields[1]] = listed.get(fields[1], 0) + 1
        if not path.is_file():
            continue  # subset mode: evaluate what is present
        x0, y0, x1, y1 = (float(v) for v in fields[2:])
        by_class.setdefault(fields[1], []).append(len(images))
        images.append(path)
        labels.append(frozenset({fields[1]}))
        boxes.append((x0, y0, x1 + 1.0, y1 + 1.0))
    if not images:
        raise DatasetLayoutError(f"no image listed in {annotations} exists under {root / 'images'}")
    queries = []
    for wnid in sorted(by_class):
        members = {images[i].name: i for i in by_class[wnid]}
        for name in choose_queries(list(members), queries_per_class):
            queries.append(SemanticQuery(members[name], wnid, boxes[members[name]]))
    queries_total = sum(min(n, queries_per_class) for n in listed.values())
    return SemanticDataset(
        "tiny-imagenet", images, labels, queries, boxes, sum(listed.values()), queries_total
    )


# ---------------------------------------------------------------- class folders


def load_class_folders(root: str | Path, queries_per_class: int = QUERIES_PER_CLASS) -> SemanticDataset:
    """One sub-folder per class; queries are full images (no box).

    A class's images are what the indexer's walk (`descriptors.images.iter_image_files`) finds in
    its folder: the same extensions (jpg/jpeg/png/webp), sub-folders included, hidden entries
    skipped. Hidden class folders are skipped too. An image's id (for the query choice) is its
    path relative to the class folder, i.e. its file name in a flat class folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder")
    images, labels, queries = [], [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list(iter_image_files(class_dir))
        start = len(images)
        images += files
        labels += [frozenset({class_dir.name})] * len(files)
        index = {f.relative_to(class_dir).as_posix(): start + i for i, f in enumerate(files)}
        queries += [
            SemanticQuery(index[n], class_dir.name, None)
            for n in choose_queries(list(index), queries_per_class)
        ]
    if not images:
        raise DatasetLayoutError(
            f"no class folder with images under {root} (expected {root}/<class>/<image>)"
        )
    return SemanticDataset(
        "folders", images, labels, queries, [None] * len(images), len(images), len(queries)
    )


# ---------------------------------------------------------------- PASCAL VOC 2010


@dataclass(frozen=True)
class VocObject:
    label: str
    box: Box
    difficult: bool
    truncated: bool

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def parse_voc_annotation(path: str | Path) -> list[VocObject]:
    """Objects of one VOC XML file. VOC boxes are 1-based inclusive; we store (xmin-1, ymin-1, xmax, ymax)."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DatasetLayoutError(f"{path}: not a VOC annotation XML ({exc})") from exc
    objects = []
    for obj in tree.getroot().iter("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            continue
        coords = [float(bnd.findtext(k, "0")) for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append(
            VocObject(
                label=(obj.findtext("name") or "").strip(),
                box=(coords[0] - 1.0, coords[1] - 1.0, coords[2], coords[3]),
                difficult=obj.findtext("difficult", "0").strip() == "1",
                truncated=obj.findtext("truncated", "0").strip() == "1",
            )
        )
    return objects


def main_object(objects: list[VocObject]) -> VocObject | None:
    """Our definition of the thesis's "main object": the object with the largest box (ties: first listed)."""
    return max(objects, key=lambda o: o.area) if objects else None


def _overlaps(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def merged_boxes(boxes: list[Box]) -> list[Box]:
    """Merge boxes that overlap (transitively) into their bounding boxes."""
    merged = [tuple(b) for b in boxes]
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                if _overlaps(merged[i], merged[j]):
                    a, b = merged[i], merged.pop(j)
                    merged[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    changed = True
                    break
            if changed:
                break
    return merged  # type: ignore[return-value]


def _voc_dir(root: Path) -> Path:
    for candidate in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
        if (candidate / "Annotations").is_dir():
            return candidate
    raise DatasetLayoutError(
        f"no Annotations/ under {root}; expected VOCdevkit/VOC2010 (Annotations, ImageSets, JPEGImages)"
    )


def voc_filtered_ids(root: str | Path, image_set: str = "trainval") -> dict[str, list[VocObject]]:
    """Image ids of `image_set` whose main object is neither difficult nor truncated -> their objects."""
    voc = _voc_dir(Path(root))
    ids_file = voc / "ImageSets" / "Main" / f"{image_set}.txt"
    if not ids_file.is_file():
        raise DatasetLayoutError(f"{ids_file} missing")
    kept = {}
    for image_id in ids_file.read_text().split():
        objects = parse_voc_annotation(voc / "Annotations" / f"{image_id}.xml")
        main = main_object(objects)
        if main is not None and not main.difficult and not main.truncated:
            kept[image_id] = objects
    return kept


def load_voc2010(
    root: str | Path,
    image_set: str = "trainval",
    queries_per_class: int = QUERIES_PER_CLASS,
    require_images: bool = True,
) -> SemanticDataset:
    """PASCAL VOC 2010 semantic retrieval (thesis protocol; details ours, documented here).

    Images: `image_set` minus those whose main object (largest box) is difficult or truncated.
    Labels: every class with an object in the image. Queries: 5 per class among the kept images
    whose main object is of that class; query box = the largest of the class's boxes after
    merging overlapping ones. With `require_images`, images missing from JPEGImages/ are dropped.
    """
    voc = _voc_dir(Path(root))
    kept = voc_filtered_ids(voc, image_set)
    images, labels, boxes, by_main_class = [], [], [], {}
    for image_id, objects in kept.items():
        path = voc / "JPEGImages" / f"{image_id}.jpg"
        if require_images and not path.is_file():
            continue
        main = main_object(objects)
        assert main is not None  # voc_filtered_ids keeps images with a main object only
        by_main_class.setdefault(main.label, []).append(len(images))
        images.append(path)
        labels.append(frozenset(o.label for o in objects))
        boxes.append(main.box)
    if not images:
        raise DatasetLayoutError(f"no VOC image of {image_set} present under {voc / 'JPEGImages'}")
    queries = []
    for label in sorted(by_main_class):
        members = {images[i].stem: i for i in by_main_class[label]}
        for image_id in choose_queries(list(members), queries_per_class):
            class_boxes = [o.box for o in kept[image_id] if o.label == label]
            box = max(merged_boxes(class_boxes), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            queries.append(SemanticQuery(members[image_id], label, box))
    main_counts: dict[str, int] = {}
    for objects in kept.values():
        label = main_object(objects).label  # type: ignore[union-attr]
        main_counts[label] = main_counts.get(label, 0) + 1
    queries_total = sum(min(n, queries_per_class) for n in main_counts.values())
    return SemanticDataset("voc2010", images, labels, queries, boxes, len(kept), queries_total)


def load_semantic_dataset(name: str, root: str | Path) -> SemanticDataset:
    if name == "voc2010":
        return load_voc2010(root)
    if name == "tiny-imagenet":
        return load_tiny_imagenet(root)
    if name == "folders":
        return load_class_folders(root)
    raise DatasetLayoutError(
        f"unknown semantic dataset {name!r}; choose one of {', '.join(SEMANTIC_DATASETS)}"
    )
