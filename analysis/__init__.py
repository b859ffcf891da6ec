"""dff-analyze: look inside the network (issue 12)."""

import descriptors  # noqa: F401  (first: sets OpenMP/OpenBLAS passive waiting before torch, numpy, faiss load)
