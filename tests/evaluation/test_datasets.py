"""Dataset readers and protocols: txt == pkl, hand-built subsets, the real shared files."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_synthetic import write_class_folders, write_tiny_imagenet

from descriptors.images import iter_image_files
from evaluation.datasets.instance import (
    GroundTruthError,
    InstanceGroundTruth,
    find_ground_truth,
    load_gnd_pkl,
    load_gt_txt,
)
from evaluation.datasets.protocols import ProtocolError, apply_protocol, present_images
from evaluation.datasets.semantic import (
    choose_queries,
    load_class_folders,
    load_tiny_imagenet,
    load_voc2010,
    merged_boxes,
    voc_filtered_ids,
)


def _by_name(gt: InstanceGroundTruth) -> list[dict]:
    out = []
    for i, q in enumerate(gt.qimlist):
        g = gt.gnd[i]
        out.append(
            {
                "query": q,
                "bbx": tuple(round(v, 3) for v in g["bbx"]),
                "ok": {gt.imlist[j] for j in g["ok"]},
                "junk": {gt.imlist[j] for j in g["junk"]},
            }
        )
    return out


def test_txt_and_pkl_agree_on_synthetic_layout(synthetic_paris: Path) -> None:
    txt = load_gt_txt(synthetic_paris / "gt_files", "paris6k")
    pkl = load_gnd_pkl(synthetic_paris / "gnd_paris6k.pkl")
    assert _by_name(txt) == _by_name(pkl)
    assert txt.landmarks == pkl.landmarks == ["checker", "rings", "stripes"]
    # find_ground_truth prefers the pkl and falls back to gt_files/
    assert find_ground_truth("paris6k", synthetic_paris).imlist == pkl.imlist
    (synthetic_paris / "gnd_paris6k.pkl").unlink()
    assert _by_name(find_ground_truth("paris6k", synthetic_paris)) == _by_name(pkl)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("txt_dir", "pkl", "dataset"),
    [
        ("paris6k-gt/gt_files", "paris6k-subset/gnd_paris6k.pkl", "paris6k"),
        ("oxford5k-gt/gt_files", "oxford5k-gt/gnd_oxford5k.pkl", "oxford5k"),
    ],
)
def test_txt_and_pkl_agree_on_shared_files(shared_data: Path, txt_dir: str, pkl: str, dataset: str) -> None:
    txt = load_gt_txt(shared_data / txt_dir, dataset)
    from_pkl = load_gnd_pkl(shared_data / pkl)
    assert len(txt.qimlist) == 55
    assert _by_name(txt) == _by_name(from_pkl)
    assert txt.landmarks == from_pkl.landmarks


@pytest.mark.shared_data
def test_shared_paris_subset_protocols(shared_data: Path) -> None:
    root = shared_data / "paris6k-subset"
    rparis = find_ground_truth("rparis6k", root)
    # the image name says defense, its positives say Arc de Triomphe
    assert rparis.landmarks[rparis.qimlist.index("paris_defense_000038")] == "triomphe"
    present = present_images(root / "jpg", rparis.imlist + rparis.qimlist)
    standard = apply_protocol("standard", rparis, present)
    assert (standard.coverage.queries, standard.coverage.queries_total) == (12, 70)
    assert (standard.coverage.images, standard.coverage.images_total) == (397, 6322)
    assert all(len(q.gnd["easy"]) + len(q.gnd["hard"]) >= 5 for q in standard.queries)
    classic = find_ground_truth("paris6k", root)
    cov = apply_protocol("standard", classic, present_images(root / "jpg", classic.imlist)).coverage
    assert (cov.queries, cov.queries_total, cov.images, cov.images_total) == (12, 55, 409, 6392)
    loo = apply_protocol("landmark-loo", rparis, present)
    assert all(q.box is None for q in loo.queries)
    assert all(loo.database.index(q.image) in q.gnd["junk"] for q in loo.queries)


def _toy_gt(revisited: bool) -> InstanceGroundTruth:
    imlist = ["a_1", "a_2", "a_3", "b_1", "b_2", "x_1"]
    if revisited:
        gnd = [
            {"bbx": (0, 0, 5, 5), "easy": [0], "hard": [1], "junk": [5]},
            {"bbx": (1, 1, 4, 4), "easy": [1, 2], "hard": [], "junk": []},
            {"bbx": (0, 0, 2, 2), "easy": [3, 4], "hard": [], "junk": []},
        ]
    else:
        gnd = [
            {"bbx": (0, 0, 5, 5), "ok": [0, 1], "junk": [5]},
            {"bbx": (1, 1, 4, 4), "ok": [1, 2], "junk": []},
            {"bbx": (0, 0, 2, 2), "ok": [3, 4], "junk": []},
        ]
    return InstanceGroundTruth("toy", imlist, ["a_1", "a_2", "b_9"], gnd, revisited, ["a", "a", "b"])


def test_standard_protocol_on_a_subset_by_hand() -> None:
    gt = _toy_gt(revisited=False)
    present = {"a_1", "a_3", "b_1", "b_2", "x_1"}  # a_2 (a query and a positive) is missing
    s = apply_protocol("standard", gt, present)
    assert s.database == ["a_1", "a_3", "b_1", "b_2", "x_1"]
    assert [q.image for q in s.queries] == ["a_1"]  # a_2 and b_9 absent
    assert s.queries[0].gnd == {"ok": [0], "junk": [4]}
    assert s.queries[0].box == (0, 0, 5, 5)
    assert (s.coverage.queries, s.coverage.queries_total, s.coverage.images, s.coverage.images_total) == (
        1,
        3,
        5,
        6,
    )


def test_landmark_loo_protocol_by_hand() -> None:
    gt = _toy_gt(revisited=True)
    present = {"a_1", "a_2", "a_3", "b_1", "x_1"}
    s = apply_protocol("landmark-loo", gt, present)
    # landmark a: easy {a_1, a_2, a_3}, hard {a_2} - easy = {}, junk {x_1}; landmark b: easy {b_1, b_2}
    assert [(q.image, q.landmark) for q in s.queries] == [
        ("a_1", "a"),
        ("a_2", "a"),
        ("a_3", "a"),
        ("b_1", "b"),
    ]
    db = {n: i for i, n in enumerate(s.database)}
    assert s.queries[0].gnd == {
        "easy": [db["a_2"], db["a_3"]],
        "hard": [],
        "junk": sorted([db["x_1"], db["a_1"]]),
    }
    assert s.queries[3].gnd == {"easy": [], "hard": [], "junk": [db["b_1"]]}  # b_2 absent: no positive left
    assert s.coverage.queries_total == 5  # a_1, a_2, a_3, b_1, b_2 would be queries on the full set


def test_protocol_errors_are_specific() -> None:
    gt = _toy_gt(revisited=False)
    with pytest.raises(ProtocolError, match="landmark-loo"):
        apply_protocol("standard", gt, {"x_1"})
    with pytest.raises(ProtocolError, match="unknown protocol"):
        apply_protocol("leave-one-in", gt, {"a_1"})


def test_missing_ground_truth_names_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(GroundTruthError, match="--gnd"):
        find_ground_truth("rparis6k", tmp_path)
    with pytest.raises(GroundTruthError, match="unknown instance dataset"):
        find_ground_truth("holidays", tmp_path)
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(GroundTruthError, match="not a readable"):
        load_gnd_pkl(tmp_path / "bad.pkl")


# ---------------------------------------------------------------- semantic datasets


def test_choose_queries_is_deterministic_and_order_free() -> None:
    names = [f"img_{i}" for i in range(20)]
    assert choose_queries(names) == choose_queries(list(reversed(names)))
    assert len(choose_queries(names)) == 5
    assert choose_queries(names[:3]) == sorted(names[:3], key=lambda n: choose_queries(names[:3]).index(n))


def test_tiny_imagenet_reader(tmp_path: Path) -> None:
    rows = write_tiny_imagenet(tmp_path / "tin", n_per_class=6)
    ds = load_tiny_imagenet(tmp_path / "tin")
    assert len(ds.images) == 18 and len(ds.queries) == 15
    name, _wnid, (x0, y0, x1, y1) = rows[0]
    i = [p.name for p in ds.images].index(name)
    assert ds.boxes[i] == (x0, y0, x1 + 1, y1 + 1)  # inclusive -> exclusive ends
    q = ds.queries[0]
    assert q.box == ds.boxes[q.index]
    relevant = ds.relevant(q)
    assert len(relevant) == 5 and q.index not in relevant


def test_class_folders_reader(tmp_path: Path) -> None:
    write_class_folders(tmp_path / "folders", n_per_class=7)
    ds = load_class_folders(tmp_path / "folders")
    assert len(ds.images) == 21 and len(ds.queries) == 15
    assert all(q.box is None for q in ds.queries)
    assert {q.label for q in ds.queries} == {"checker", "stripes", "rings"}


def test_class_folders_take_the_images_the_indexer_walk_takes(tmp_path: Path) -> None:
    """.tif/.bmp (not indexable), hidden files and hidden folders are skipped as by the indexer."""
    root = tmp_path / "folders"
    write_class_folders(root, n_per_class=2)
    sample = (root / "rings" / "rings_0.png").read_bytes()
    for extra in ("rings/scan.tif", "rings/scan.TIFF", "rings/scan.bmp", "rings/.hidden.png", ".cache/x.png"):
        (root / extra).parent.mkdir(exist_ok=True)
        (root / extra).write_bytes(sample)
    (root / "rings" / "more").mkdir()
    (root / "rings" / "more" / "upper.PNG").write_bytes(sample)
    ds = load_class_folders(root)
    walked = list(iter_image_files(root / "rings"))
    assert [p for p, labels in zip(ds.images, ds.labels, strict=True) if labels == {"rings"}] == walked
    assert [p.relative_to(root / "rings").as_posix() for p in walked] == [
        "more/upper.PNG",
        "rings_0.png",
        "rings_1.png",
    ]
    assert {label for labels in ds.labels for label in labels} == {"checker", "stripes", "rings"}
    assert len(ds.images) == 7


_VOC_XML = """<annotation><filename>{id}.jpg</filename>{objects}</annotation>"""
_VOC_OBJ = (
    "<object><name>{name}</name><truncated>{t}</truncated><difficult>{d}</difficult>"
    "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
)


def test_voc_reader_on_a_planted_devkit(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    images = {
        # two overlapping dogs merge into (0,0,60,40) after the -1 shift; a lone dog is smaller
        "2008_000001": [
            ("dog", 0, 0, (1, 1, 40, 40)),
            ("dog", 0, 0, (30, 1, 60, 30)),
            ("dog", 0, 0, (70, 70, 80, 80)),
        ],
        "2008_000002": [
            ("cat", 0, 1, (1, 1, 90, 90)),
            ("dog", 0, 0, (1, 1, 10, 10)),
        ],  # main object difficult
        "2008_000003": [("cat", 1, 0, (1, 1, 90, 90))],  # main object truncated
        "2008_000004": [("cat", 0, 0, (1, 1, 50, 50)), ("dog", 1, 0, (1, 1, 20, 20))],
    }
    for image_id, objects in images.items():
        body = "".join(_VOC_OBJ.format(name=n, t=t, d=d, b=b) for n, t, d, b in objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(_VOC_XML.format(id=image_id, objects=body))
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(images) + "\n")
    assert sorted(voc_filtered_ids(tmp_path)) == ["2008_000001", "2008_000004"]
    ds = load_voc2010(tmp_path)
    assert [p.stem for p in ds.images] == ["2008_000001", "2008_000004"]
    assert ds.labels == [frozenset({"dog"}), frozenset({"cat", "dog"})]
    by_label = {q.label: q for q in ds.queries}
    assert by_label["dog"].box == (0.0, 0.0, 60.0, 40.0)
    assert ds.relevant(by_label["dog"]) == {1}  # image 4 has a (truncated, secondary) dog


def test_merged_boxes_is_transitive() -> None:
    assert merged_boxes([(0, 0, 2, 2), (5, 5, 6, 6), (1, 1, 4, 4), (3, 3, 5.5, 5.5)]) == [(0, 0, 6, 6)]


@pytest.mark.shared_data
def test_voc_filter_on_the_official_annotations(shared_data: Path) -> None:
    kept = voc_filtered_ids(shared_data / "voc2010-annotations")
    assert len(kept) == 5448  # largest box as main object; the thesis reports 5,455
    ds = load_voc2010(shared_data / "voc2010-annotations", require_images=False)
    assert len(ds.queries) == 100  # 20 classes x 5
