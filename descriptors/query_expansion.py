"""Query expansion: a query re-issued with its first neighbours folded in.

Pure functions on numpy vectors, shared by the searcher (``searcher/engine.py``) and ``dff-eval``
(``evaluation/encode.py``): the caller searches, picks the neighbours in rank order (skipping
what it must, e.g. the query's own image in leave-one-out), and searches again with the result.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALPHA_QE", "EXPANSIONS", "expand_query"]

# the query expansions the searcher and dff-eval offer: average QE, alpha-QE, diffusion on the
# database's k-NN graph (descriptors.diffusion; the searcher needs the graph stored with the index)
EXPANSIONS = ("average", "alpha", "diffusion")
ALPHA_QE = 3.0  # alpha-QE's exponent (Radenovic et al.)


def expand_query(query: np.ndarray, neighbours: np.ndarray, depth: int, alpha: float = 0.0) -> np.ndarray:
    """Average query expansion: ``query`` + its first ``depth`` ``neighbours`` (rows, best first),
    l2-normalized. ``depth == 0`` returns ``query`` itself; fewer than ``depth`` neighbours (a small
    index) use all there are. ``alpha > 0``: alpha-QE (Radenovic et al., TPAMI 2018), each
    neighbour weighted by its similarity to the query to the power alpha (negative: weight 0)."""
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
        raise ValueError(f"expand_query: depth must be an int >= 0, got {depth!r}")
    query = np.asarray(query)
    if depth == 0:
        return query
    neighbours = np.asarray(neighbours, dtype=query.dtype).reshape(-1, query.shape[-1])
    if not (alpha >= 0 and np.isfinite(alpha)):
        raise ValueError(f"expand_query: alpha must be a finite number >= 0, got {alpha!r}")
    neighbours = neighbours[:depth]
    if alpha:
        weights = np.maximum(neighbours @ query, 0.0) ** alpha
        expanded = query + (weights[:, None] * neighbours).sum(axis=0)
    else:
        expanded = query + neighbours.sum(axis=0)
    norm = np.linalg.norm(expanded)
    return expanded / norm if norm > 0 else expanded
