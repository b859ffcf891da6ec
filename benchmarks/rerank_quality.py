"""Re-ranking and query-expansion study on the Paris subset (issue 13): which match kernel, which
row compression, which expansion, for the NMF rows and R-MAC's regions, on `dff-eval`'s protocols
and cached activations (the `Bench` of ablation_quality.py).

    python benchmarks/rerank_quality.py --root ../shared/data/paris6k-subset [--cache-dir DIR] [--size 320]
        [--studies kernels,codec,expansion] [--json FILE]

`loo` = landmark-LOO, revisited Medium mAP (398 full-image queries); `std` = the 12 box queries,
revisited Medium. Re-ranking depth 100 unless said otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ablation_quality import Bench, _table  # noqa: E402

from descriptors.aggregate import aggregate_rows  # noqa: E402
from descriptors.diffusion import diffusion_rank, knn_graph  # noqa: E402
from descriptors.pipeline import DescriptorConfig  # noqa: E402
from descriptors.rerank import MatchKernel, RowCodec, row_features, self_similarity  # noqa: E402
from evaluation.config import default_cache_dir  # noqa: E402
from evaluation.encode import expand_queries, rank_database  # noqa: E402
from evaluation.metrics import compute_map_revisited  # noqa: E402

STUDIES = ("kernels", "codec", "expansion")
METHODS = (("nmf-v", 4), ("nmf-vu", 4), ("nmf-vu", 8), ("rmac", 4), ("crow", 4), ("gem", 4))
KERNELS = {
    "alpha 1, normalized": MatchKernel(1.0, -1.0, True),
    "alpha 3": MatchKernel(3.0, 0.0, False),
    "alpha 3, normalized": MatchKernel(3.0, 0.0, True),
    "alpha 3, tau 0.2, normalized": MatchKernel(3.0, 0.2, True),
    "alpha 5, normalized": MatchKernel(5.0, 0.0, True),
}


class Prepared:
    """One method's global vectors and kernel rows for `loo` and `std`."""

    def __init__(self, bench: Bench, rows: dict, codec_dim: int | None) -> None:
        db_names = bench.sets["loo"].database
        self.bench = bench
        feats = {n: row_features(r) for n, r in rows["db"].items()}
        q_feats = {key: row_features(r) for key, r in rows["q"].items()}
        if codec_dim:
            codec = RowCodec.fit(np.concatenate([feats[n] for n in db_names]), codec_dim)
            feats = {n: codec.decode(codec.encode(f)) for n, f in feats.items()}
            q_feats = {key: codec.decode(codec.encode(f)) for key, f in q_feats.items()}
        self.sets = {}
        self._kernels: dict = {}
        for set_name in ("loo", "std"):
            evalset = bench.sets[set_name]
            db = np.stack([aggregate_rows(rows["db"][n]) for n in evalset.database])
            if set_name == "loo":
                q_rows = [rows["db"][q.image] for q in evalset.queries]
                q_feat = [feats[q.image] for q in evalset.queries]
            else:
                q_rows = [rows["q"][("std", i)] for i in range(len(evalset.queries))]
                q_feat = [q_feats[("std", i)] for i in range(len(evalset.queries))]
            queries = np.stack([aggregate_rows(r) for r in q_rows])
            position = {n: j for j, n in enumerate(evalset.database)}
            exclude = [position.get(q.image) if set_name == "loo" else None for q in evalset.queries]
            self.sets[set_name] = (evalset, db, queries, q_feat, [feats[n] for n in evalset.database], exclude)

    def kernel_matrix(self, set_name: str, kernel: MatchKernel) -> np.ndarray:
        """(n_q, n_db) normalized kernel scores, from one product of all rows (cached)."""
        key = (set_name, kernel)
        if key not in self._kernels:
            _, _, _, q_feat, db_feat, _ = self.sets[set_name]
            self._kernels[key] = _pairwise(q_feat, db_feat, kernel)
        return self._kernels[key]

    def _rerank(self, set_name: str, ranking: np.ndarray, depth: int, kernel: MatchKernel) -> np.ndarray:
        scores = self.kernel_matrix(set_name, kernel)
        out = ranking.copy()
        for i in range(len(ranking)):
            top = ranking[i, :depth]
            out[i, :depth] = top[np.argsort(-scores[i, top], kind="stable")]
        return out

    def score(self, set_name: str, rerank: int = 0, kernel: MatchKernel | None = None, qe: int = 0,
              alpha: float = 0.0, diffusion: bool = False) -> float:
        evalset, db, queries, _, _, exclude = self.sets[set_name]
        ranking = rank_database(queries, db)
        if rerank:
            ranking = self._rerank(set_name, ranking, rerank, kernel)
        if qe:
            expanded = expand_queries(queries, db, ranking, qe, exclude, alpha=alpha)
            ranking = rank_database(expanded, db)
            if rerank:
                ranking = self._rerank(set_name, ranking, rerank, kernel)
        if diffusion:
            affinity = knn_graph(db, 10).affinity(3.0)
            sims = queries @ db.T
            ranking = np.stack([diffusion_rank(sims[i], affinity, k=10, exclude=exclude[i]) for i in range(len(queries))])
        return 100 * compute_map_revisited(ranking.T, evalset.gnd())["medium"]


def _pairwise(q_feat: list[np.ndarray], db_feat: list[np.ndarray], kernel: MatchKernel) -> np.ndarray:
    """The normalized kernel of every query with every database image (descriptors.rerank's
    formula, all pairs at once: one matrix product, then sums over each image's rows)."""
    def stack(feats):
        counts = np.array([len(f) for f in feats])
        return np.concatenate(feats), np.concatenate([[0], np.cumsum(counts)[:-1]])

    q_rows, q_starts = stack(q_feat)
    d_rows, d_starts = stack(db_feat)
    sigma = kernel.sigma(q_rows @ d_rows.T)
    raw = np.add.reduceat(np.add.reduceat(sigma, q_starts, axis=0), d_starts, axis=1)
    q_self = np.array([self_similarity(f, kernel) for f in q_feat])
    d_self = np.array([self_similarity(f, kernel) for f in db_feat])
    if not kernel.normalize:
        return raw
    return raw / np.sqrt(np.maximum(q_self[:, None], 1e-12) * np.maximum(d_self[None, :], 1e-12))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "paris6k-subset")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    studies = args.studies.split(",")
    bench = Bench(args.root, args.cache_dir or default_cache_dir())
    started = time.perf_counter()
    configs = [DescriptorConfig(method=m, k=k) for m, k in METHODS]
    labels = [f"{m} K{k}" if m.startswith("nmf") else m for m, k in METHODS]
    all_rows = bench.rows(args.size, configs)
    results: dict = {"size": args.size}
    full = [Prepared(bench, r, None) for r in all_rows]
    if "kernels" in studies:
        lines = []
        for label, prep in zip(labels, full, strict=True):
            cells = [f"{prep.score('loo'):.1f} / {prep.score('std'):.1f}"]
            for kname, kernel in KERNELS.items():
                loo, std = prep.score("loo", 100, kernel), prep.score("std", 100, kernel)
                results[f"kernel/{label}/{kname}"] = {"loo": loo, "std": std}
                cells.append(f"{loo:.1f} / {std:.1f}")
            lines.append([label, *cells])
            print(label, cells, flush=True)
        _table(f"Re-ranking the top 100 by match kernel, {args.size} px: loo / std Medium mAP",
               ["rows", "no re-ranking", *KERNELS], lines)
    kernel = MatchKernel(3.0, 0.0, True)
    if "codec" in studies:
        lines = []
        for label, rows, prep in zip(labels, all_rows, full, strict=True):
            cells = []
            for dim in (None, 256, 128, 64):
                p = prep if dim is None else Prepared(bench, rows, dim)
                loo = p.score("loo", 100, kernel)
                results[f"codec/{label}/{dim or 'full'}"] = loo
                cells.append(f"{loo:.1f}")
            lines.append([label, *cells])
        _table("Row compression (float16 after projection), alpha 3 normalized, top 100: loo Medium mAP",
               ["rows", "float32, full", "256-d", "128-d", "64-d"], lines)
    if "expansion" in studies:
        variants = {
            "none": {},
            "average QE 5": {"qe": 5},
            "alpha-QE 5, alpha 3": {"qe": 5, "alpha": 3.0},
            "alpha-QE 10, alpha 3": {"qe": 10, "alpha": 3.0},
            "diffusion (k 10)": {"diffusion": True},
            "re-rank 100": {"rerank": 100, "kernel": kernel},
            "re-rank 100 + average QE 5": {"rerank": 100, "kernel": kernel, "qe": 5},
            "re-rank 100 + alpha-QE 5": {"rerank": 100, "kernel": kernel, "qe": 5, "alpha": 3.0},
            "re-rank 100 + alpha-QE 10": {"rerank": 100, "kernel": kernel, "qe": 10, "alpha": 3.0},
        }
        lines = []
        for label, prep in zip(labels, full, strict=True):
            cells = []
            for vname, kwargs in variants.items():
                loo = prep.score("loo", **kwargs)
                results[f"expansion/{label}/{vname}"] = loo
                cells.append(f"{loo:.1f}")
            lines.append([label, *cells])
        _table(f"Expansion and re-ranking, {args.size} px: loo Medium mAP", ["rows", *variants], lines)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
