"""Evaluation protocols on (possibly partial) instance-retrieval datasets.

- `standard`: the queries whose image is present, with their box; database = the present
  images of `imlist` (the revisited imlists exclude the queries, the classic ones include
  them, and a classic query counts among its own positives, as in the official protocol);
  positives and junk intersected with what is present.
- `landmark-loo` (landmark leave-one-out, for subsets with few queries): every present image
  that is a positive of some query of landmark L is a query (full image, no box);
  positives = the other present positives of L; junk = L's junk; the query itself is junk,
  so it takes no rank. For revisited ground truth: easy_L = union of the easy lists,
  hard_L = union of the hard lists minus easy_L, junk_L = union of junk minus both.

Coverage (queries used / total, images present / total) travels with every result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation.datasets.instance import Box, InstanceGroundTruth

PROTOCOLS = ("standard", "landmark-loo")


class ProtocolError(ValueError):
    """The protocol cannot be applied (unknown name, nothing present, ...)."""


@dataclass(frozen=True)
class Coverage:
    queries: int
    queries_total: int
    images: int
    images_total: int

    def as_dict(self) -> dict[str, int]:
        return {
            "queries": self.queries,
            "queries_total": self.queries_total,
            "images": self.images,
            "images_total": self.images_total,
        }

    def __str__(self) -> str:
        return f"queries {self.queries}/{self.queries_total}, images {self.images}/{self.images_total}"


@dataclass(frozen=True)
class EvalQuery:
    image: str
    box: Box | None
    gnd: dict  # 'ok'/'junk' or 'easy'/'hard'/'junk', indices into InstanceEvalSet.database
    landmark: str = ""


@dataclass(frozen=True)
class InstanceEvalSet:
    dataset: str
    protocol: str
    database: list[str]
    queries: list[EvalQuery]
    revisited: bool
    coverage: Coverage

    def gnd(self) -> list[dict]:
        return [q.gnd for q in self.queries]


def present_images(images_dir: str | Path, names: list[str], extension: str = ".jpg") -> set[str]:
    images_dir = Path(images_dir)
    on_disk = {p.name for p in images_dir.iterdir()} if images_dir.is_dir() else set()
    return {n for n in names if n + extension in on_disk}


def _keys(revisited: bool) -> tuple[str, ...]:
    return ("easy", "hard", "junk") if revisited else ("ok", "junk")


def standard_protocol(gt: InstanceGroundTruth, present: set[str]) -> InstanceEvalSet:
    database = [n for n in gt.imlist if n in present]
    position = {n: i for i, n in enumerate(database)}
    queries = []
    for i, qname in enumerate(gt.qimlist):
        if qname not in present:
            continue
        g = gt.gnd[i]
        mapped = {
            k: sorted(position[gt.imlist[j]] for j in g[k] if gt.imlist[j] in position)
            for k in _keys(gt.revisited)
        }
        queries.append(EvalQuery(qname, g["bbx"], mapped, gt.landmarks[i] if gt.landmarks else ""))
    if not queries:
        raise ProtocolError(
            f"none of the {len(gt.qimlist)} {gt.dataset} query images is present; "
            "use --protocol landmark-loo on a subset without queries"
        )
    coverage = Coverage(len(queries), len(gt.qimlist), len(database), len(gt.imlist))
    return InstanceEvalSet(gt.dataset, "standard", database, queries, gt.revisited, coverage)


def _landmark_lists(gt: InstanceGroundTruth) -> dict[str, dict[str, set[str]]]:
    by_landmark: dict[str, dict[str, set[str]]] = {}
    for i, landmark in enumerate(gt.landmarks):
        entry = by_landmark.setdefault(landmark, {k: set() for k in _keys(gt.revisited)})
        for k in _keys(gt.revisited):
            entry[k].update(gt.imlist[j] for j in gt.gnd[i][k])
    for entry in by_landmark.values():
        if gt.revisited:
            entry["hard"] -= entry["easy"]
            entry["junk"] -= entry["easy"] | entry["hard"]
        else:
            entry["junk"] -= entry["ok"]
    return by_landmark


def landmark_loo_protocol(gt: InstanceGroundTruth, present: set[str]) -> InstanceEvalSet:
    if not gt.landmarks:
        raise ProtocolError(f"{gt.dataset} ground truth has no landmark per query; landmark-loo needs them")
    # the gallery is imlist (the revisited one excludes the query images: they are not
    # labelled as positives of anything, so adding them would add unlabelled distractors)
    database = [n for n in gt.imlist if n in present]
    position = {n: i for i, n in enumerate(database)}
    queries = []
    n_total = 0
    for landmark, lists in sorted(_landmark_lists(gt).items()):
        positive_kinds = ("easy", "hard") if gt.revisited else ("ok",)
        all_positives = set().union(*(lists[k] for k in positive_kinds))
        n_total += len(all_positives)
        for qname in sorted(all_positives & present):
            mapped = {
                k: sorted(position[n] for n in lists[k] if n in position and n != qname)
                for k in _keys(gt.revisited)
            }
            mapped["junk"] = sorted(set(mapped["junk"]) | {position[qname]})
            queries.append(EvalQuery(qname, None, mapped, landmark))
    if not queries:
        raise ProtocolError(
            f"no present image of {gt.dataset} is a positive of any query; nothing to evaluate"
        )
    coverage = Coverage(len(queries), n_total, len(database), len(gt.imlist))
    return InstanceEvalSet(gt.dataset, "landmark-loo", database, queries, gt.revisited, coverage)


def apply_protocol(name: str, gt: InstanceGroundTruth, present: set[str]) -> InstanceEvalSet:
    if name == "standard":
        return standard_protocol(gt, present)
    if name == "landmark-loo":
        return landmark_loo_protocol(gt, present)
    raise ProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
