"""The ablation script scores exactly what `dff-eval` scores (same protocols, same encoders)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.ablation_quality import Bench
from descriptors.pipeline import DescriptorConfig
from evaluation.config import EvalConfig
from evaluation.runners import run_instance

SIZE = 128  # small images keep the 409 forwards cheap; the comparison holds at any size


@pytest.mark.slow
def test_ablation_defaults_reproduce_dff_eval(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "paris6k-subset"
    cache = tmp_path / "cache"
    methods = ("rmac", "nmf-vu")
    bench = Bench(root, cache)
    rows = bench.rows(SIZE, [DescriptorConfig(method=m) for m in methods])
    ablation = {m: (bench.score(r), bench.score(r, qe=5)) for m, r in zip(methods, rows, strict=True)}

    # the ablation scores the first stage: dff-eval without its default re-ranking (--rerank 0)
    config = EvalConfig(methods=methods, qe=(0, 5), rerank=(0,), image_size=SIZE, cache_dir=cache, progress=False)
    runs = {
        "loo": run_instance("rparis6k", root, dataclasses.replace(config, protocol="landmark-loo")),
        "std": run_instance("rparis6k", root, dataclasses.replace(config, protocol="standard")),
        "std-classic": run_instance("paris6k", root, dataclasses.replace(config, protocol="standard")),
    }
    compared = 0
    for name, report in runs.items():
        key = "map" if name == "std-classic" else "map_medium"
        for result in report.results:
            plain, expanded = ablation[result.method]
            mine = (plain if result.qe == 0 else expanded)[name]
            assert mine == pytest.approx(100 * result.scores[key], abs=1e-9), (name, result.method, result.qe)
            compared += 1
    assert compared == 12  # 3 protocols x 2 methods x QE 0 / 5
