"""Oxford5k / Paris6k ground truth, classic and revisited.

Two sources give the same ground truth:
- the original files: `<landmark>_<n>_query.txt` (`<image> x0 y0 x1 y1`, Oxford images
  prefixed `oxc1_`) and `<landmark>_<n>_{good,ok,junk}.txt` (one image name a line);
  positives = good + ok (classic protocol);
- revisitop's `gnd_<dataset>.pkl`: `imlist`, `qimlist`, `gnd[i]` with `bbx` and either
  `ok`/`junk` (classic) or `easy`/`hard`/`junk` (revisited), indices into `imlist`.

Each query also gets a *landmark*: the file-name landmark for the txt source; for a pkl, the
most common landmark among its positives' image names (`paris_<landmark>_<n>`,
`<landmark>_<n>`), ignoring the generic `general`/`oxford` names. Image names are not enough:
e.g. rparis query `paris_defense_000038` is a query of the Arc de Triomphe.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

Box = tuple[float, float, float, float]

INSTANCE_DATASETS = ("oxford5k", "paris6k", "roxford5k", "rparis6k")
_GENERIC_LANDMARKS = {"general", "oxford"}
_NAME_PATTERN = re.compile(r"^(?:paris_)?(?P<landmark>.+?)_\d+$")


class GroundTruthError(ValueError):
    """Ground-truth files are missing or malformed."""


@dataclass
class InstanceGroundTruth:
    """revisitop-layout ground truth: indices in `gnd` refer to `imlist`."""

    dataset: str
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]
    revisited: bool
    landmarks: list[str] = field(default_factory=list)

    def positives(self, i: int) -> list[int]:
        g = self.gnd[i]
        return list(g["easy"]) + list(g["hard"]) if self.revisited else list(g["ok"])


def landmark_of_name(name: str) -> str:
    """`paris_louvre_000081` -> `louvre`, `all_souls_000013` -> `all_souls`."""
    match = _NAME_PATTERN.match(name)
    return match.group("landmark") if match else name


def _majority_landmark(imlist: list[str], indices: list[int], fallback: str) -> str:
    counts = Counter(landmark_of_name(imlist[j]) for j in indices)
    for name in _GENERIC_LANDMARKS:
        counts.pop(name, None)
    return counts.most_common(1)[0][0] if counts else landmark_of_name(fallback)


def load_gnd_pkl(path: str | Path, dataset: str | None = None) -> InstanceGroundTruth:
    """Read a revisitop `gnd_*.pkl` (classic `ok`/`junk` or revisited `easy`/`hard`/`junk`)."""
    path = Path(path)
    if not path.is_file():
        raise GroundTruthError(f"ground-truth file {path} does not exist")
    with path.open("rb") as f:
        try:
            raw = pickle.load(f)
        except Exception as exc:  # pickle raises many types on garbage input
            raise GroundTruthError(f"{path} is not a readable revisitop gnd pickle: {exc}") from exc
    for key in ("imlist", "qimlist", "gnd"):
        if key not in raw:
            raise GroundTruthError(
                f"{path} lacks key {key!r}; expected revisitop layout (imlist, qimlist, gnd)"
            )
    revisited = "easy" in raw["gnd"][0]
    gnd = []
    for g in raw["gnd"]:
        entry: dict = {"bbx": tuple(float(v) for v in g["bbx"]) if g.get("bbx") is not None else None}
        for key in ("easy", "hard", "junk") if revisited else ("ok", "junk"):
            entry[key] = [int(v) for v in g[key]]
        gnd.append(entry)
    name = dataset or path.stem.removeprefix("gnd_")
    gt = InstanceGroundTruth(name, list(raw["imlist"]), list(raw["qimlist"]), gnd, revisited)
    gt.landmarks = [_majority_landmark(gt.imlist, gt.positives(i), q) for i, q in enumerate(gt.qimlist)]
    return gt


def _read_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _query_sort_key(stem: str) -> tuple[str, int]:
    landmark, _, number = stem.rpartition("_")
    return landmark, int(number) if number.isdigit() else 0


def load_gt_txt(
    gt_dir: str | Path, dataset: str, image_names: list[str] | None = None
) -> InstanceGroundTruth:
    """Read the original `*_query.txt / _good.txt / _ok.txt / _junk.txt` files (classic protocol).

    `imlist` is `image_names` (e.g. the `jpg/` listing) plus every name the files mention,
    sorted; queries are ordered by landmark then number, as in the revisitop pickles.
    """
    gt_dir = Path(gt_dir)
    query_files = sorted(
        gt_dir.glob("*_query.txt"), key=lambda p: _query_sort_key(p.name[: -len("_query.txt")])
    )
    if not query_files:
        raise GroundTruthError(
            f"no *_query.txt files in {gt_dir}; expected the original Oxford/Paris gt files"
        )
    raw_queries = []
    mentioned: set[str] = set(image_names or ())
    for qf in query_files:
        stem = qf.name[: -len("_query.txt")]
        fields = qf.read_text().split()
        if len(fields) != 5:
            raise GroundTruthError(f"{qf}: expected '<image> x0 y0 x1 y1', got {' '.join(fields)!r}")
        qname = fields[0].removeprefix("oxc1_")
        box = tuple(float(v) for v in fields[1:])
        lists = {}
        for kind in ("good", "ok", "junk"):
            f = gt_dir / f"{stem}_{kind}.txt"
            if not f.is_file():
                raise GroundTruthError(f"{f} is missing (every *_query.txt needs _good/_ok/_junk files)")
            lists[kind] = _read_names(f)
            mentioned.update(lists[kind])
        mentioned.add(qname)
        raw_queries.append((stem, qname, box, lists))
    imlist = sorted(mentioned)
    index = {name: i for i, name in enumerate(imlist)}
    gnd = []
    for _, _, box, lists in raw_queries:
        ok = sorted({index[n] for n in lists["good"] + lists["ok"]})
        gnd.append({"bbx": box, "ok": ok, "junk": sorted({index[n] for n in lists["junk"]})})
    landmarks = [_query_sort_key(stem)[0] for stem, *_ in raw_queries]
    return InstanceGroundTruth(dataset, imlist, [q[1] for q in raw_queries], gnd, False, landmarks)


def find_ground_truth(
    dataset: str, root: str | Path, gnd_path: str | Path | None = None
) -> InstanceGroundTruth:
    """Locate and read the ground truth of `dataset` under `root` (or at `gnd_path`).

    Looked for, in order: `gnd_path` (a pkl file or a folder of txt files), `root/gnd_<dataset>.pkl`,
    and for the classic datasets `root/gt_files/` or `root/*_query.txt`.
    """
    if dataset not in INSTANCE_DATASETS:
        raise GroundTruthError(
            f"unknown instance dataset {dataset!r}; choose one of {', '.join(INSTANCE_DATASETS)}"
        )
    root = Path(root)
    image_names = sorted(p.stem for p in (root / "jpg").glob("*.jpg")) if (root / "jpg").is_dir() else None
    if gnd_path is not None:
        gnd_path = Path(gnd_path)
        if gnd_path.is_dir():
            return load_gt_txt(gnd_path, dataset, image_names)
        return load_gnd_pkl(gnd_path, dataset)
    pkl = root / f"gnd_{dataset}.pkl"
    if pkl.is_file():
        return load_gnd_pkl(pkl, dataset)
    if not dataset.startswith("r"):
        for candidate in (root / "gt_files", root):
            if any(candidate.glob("*_query.txt")):
                return load_gt_txt(candidate, dataset, image_names)
    raise GroundTruthError(
        f"no ground truth for {dataset} under {root}: expected {pkl.name}"
        + ("" if dataset.startswith("r") else " or gt_files/*_query.txt")
        + " (pass --gnd PATH to point at it)"
    )
