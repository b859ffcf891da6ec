"""Evaluation harness (`dff-eval`): datasets, metrics, activation cache, runners. Nothing imports it."""

import descriptors  # noqa: F401  (first: sets OpenMP/OpenBLAS passive waiting before torch, numpy, faiss load)
