"""troupe: a company of AI personas run as supervised Ray actors.

The package is laid out as the design card says: actors, personas, integrations, control panel, config.
"""

import os

# numpy's only work here is the embedding model's small matrices, on a caller's path in a process whose
# event loop serves other callers: BLAS threads would only contend with it (set before numpy loads)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
