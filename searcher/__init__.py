"""dff-serve, dff-query, dff-demo: the gRPC search service and its clients."""

import descriptors  # noqa: F401  (first: sets OpenMP/OpenBLAS passive waiting before torch, numpy, faiss load)
