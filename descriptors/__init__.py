"""Pure tensor code: backbones, NMF, descriptors.

Importing the package sets the OpenMP / OpenBLAS passive-waiting variables (descriptors.threads)
before torch, numpy or faiss load in any of our programs: they read them only once, at load.
"""

from .threads import configure_environment

configure_environment()
