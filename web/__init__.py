"""dff-web: the search page (issue 11)."""

import descriptors  # noqa: F401  (first: sets OpenMP/OpenBLAS passive waiting before torch, numpy, faiss load)
