"""Loaded models and Python's cyclic garbage collector.

Loading MiniLM leaves about 550,000 objects that live as long as the process: the modules of
PyTorch, transformers and sentence-transformers, and the model's own. Every full collection
walks all of them. On 2 cores one took 284 ms, and it comes at no chosen moment: ingesting
squad-v2-dev set one off about every other ingestion, on whichever thread was allocating,
and every other thread (the model's among them) waited for it. On a GPU that is a large
part of an ingestion that takes 1-2 s in all (a simulated fast GPU, 2 cores: 1.24 s and
1.55 s for the ingestions that met one, against 0.80 s and 1.25 s for those that did not).

So after a model loads, what is alive is moved to the collector's permanent generation
(``gc.freeze``), which collections never walk: a full collection then takes about 15 ms.
Reference counting still frees those objects as usual; only a reference cycle among them
that became garbage later would stay in memory. What is alive when a model has loaded is
mostly the libraries and the models, which stay as long as the process.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()


def freeze_loaded() -> None:
    """Collect the garbage a load left behind, then freeze what is alive (see above)."""
    with _lock:
        gc.collect()
        gc.freeze()
