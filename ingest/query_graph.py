"""Queries through a frozen TorchScript graph of the embedding model, on CPU.

A query is a handful of tokens, and PyTorch's eager forward pass of a small model spends much
of its time between its kernels. ``torch.jit.trace`` records the pass once, and ``freeze``
plus ``optimize_for_inference`` fold the weights into the graph and fuse its operations.
Measured on 2 cores with all-MiniLM-L6-v2, 400 SQuAD questions one at a time: p50 4.8 ms,
against 5.8 ms for the eager pass and 7.1 ms for ``SentenceTransformer.encode``; the vectors
differ by at most 1.2e-7. Document batches are compute, not overhead: there the graph was
slower (256 SQuAD passages in batches of 32: 5.8-5.9 s against 5.6-5.8 s eager), so
documents stay on the eager pass.

In bfloat16 (the default on CPUs that compute it) the graph takes a MiniLM query through
the model thread in 2.8-3.0 ms against 3.4-4.4 ms eager, and float32's graph in 5.8-6.2 ms
(three turns each, one process). Its vectors are the bfloat16 model's to within 2.5e-3, its
rounding, so its check allows ``BFLOAT16_TOLERANCE``.

A trace records one run: a Python branch taken on the values of that run is fixed in the
graph. So the graph is traced on a padded batch, which takes the branch that applies the
attention mask, and before any query uses it, it is checked against the eager pass on
batches of other sizes and lengths, each run three times (TorchScript optimizes a graph
again after its first runs). Any difference, or any error on the way, and queries stay on
the eager pass.

TorchScript is deprecated in PyTorch 2.13 (``torch.compile`` and ``torch.export`` are its
successors); the day it is gone, ``build`` fails and queries take the eager pass. Its
successors need a C++ compiler at run time. ``torch.compile(dynamic=True)`` took 20 s to
build the same pass here, and ran queries in 0.77-0.90 of the eager time (two turns); this
graph, in runs of its own, in 0.77-0.84 of it, built in 0.3 s with no compiler.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Larger models are left eager: their forward pass is compute, which a graph hardly
# shortens, and the graph holds a second copy of the weights (MiniLM's: 71 MB more RSS).
MAX_PARAMETERS = 150_000_000
TOLERANCE = 1e-4  # largest difference from the eager pass, on unit vectors, in float32
# bfloat16 keeps 8 bits of mantissa, and the graph's fused operations round differently from
# the eager pass: MiniLM's graph differs from it by up to 0.0025. What the check is for
# differs by far more: MiniLM without its attention mask, on the padded batch of
# CHECK_BATCHES, by 0.33-0.54 (0.33 in float32 too).
BFLOAT16_TOLERANCE = 1e-2
# The precisions a graph is built for, each with its tolerance (float16 is GPU-only: eager).
TOLERANCES = {"float32": TOLERANCE, "bfloat16": BFLOAT16_TOLERANCE}

TRACE_TEXTS = ["when does it open?",
               "how many days does a refund take to reach the account after the parcel arrives?"]
CHECK_BATCHES = [
    ["tea"],
    ["西湖龙井产于哪里？", "what does an adult ticket cost at the observatory on a weekend "
     "afternoon, and is there a reduced price for students or for visitors over 65?",
     "refund time"],
]


class QueryGraph:
    """The traced pass, for inputs with the keys and the non-array values it was traced with."""

    def __init__(self, module: Any, keys: tuple[str, ...], extras: dict[str, Any]) -> None:
        self.module = module
        self.keys = keys
        self.extras = extras

    def fits(self, features: Any) -> bool:
        arrays = tuple(k for k, v in features.items() if hasattr(v, "shape"))
        others = {k: v for k, v in features.items() if not hasattr(v, "shape")}
        return arrays == self.keys and others == self.extras

    def __call__(self, features: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vecs = self.module(*(features[k] for k in self.keys))
        return np.asarray(vecs.numpy(), dtype=np.float32)


def build(model: Any, prepare: Callable[[list[str]], Any],
          eager: Callable[[Any], np.ndarray], tolerance: float = TOLERANCE
          ) -> QueryGraph | None:
    """A checked graph of ``model`` (a sentence-transformers model on CPU, in float32 or
    bfloat16), or None. ``prepare`` makes the model's inputs for texts; ``eager`` runs the
    model's own pass on them, as the graph must, to within ``tolerance``."""
    try:
        graph = _trace(model, prepare(TRACE_TEXTS))
        for texts in CHECK_BATCHES:
            features = prepare(texts)
            if not graph.fits(features):
                log.warning("embedding model inputs change from batch to batch: queries are "
                            "encoded without a traced graph")
                return None
            expected = eager(features)
            for _ in range(3):
                diff = float(np.abs(graph(features) - expected).max())
                if not diff <= tolerance:
                    log.warning("the embedding model's traced graph differs from the model by "
                                "%.3g: queries are encoded without it", diff)
                    return None
    except Exception as exc:  # a model TorchScript cannot trace: the eager pass it is
        log.info("embedding model not traced (%s: %s): queries use the eager pass",
                 type(exc).__name__, exc)
        return None
    return graph


def _trace(model: Any, features: Any) -> QueryGraph:
    import torch

    keys = tuple(k for k, v in features.items() if hasattr(v, "shape"))
    extras = {k: v for k, v in features.items() if not hasattr(v, "shape")}

    class Pass(torch.nn.Module):
        """The model's forward pass from its input arrays to unit sentence vectors."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *arrays: torch.Tensor) -> torch.Tensor:
            out = self.model.forward({**dict(zip(keys, arrays, strict=True)), **extras})
            return torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=1)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the branches, checked after
        warnings.simplefilter("ignore", DeprecationWarning)  # known: see the module's notes
        traced = torch.jit.trace(Pass().eval(), tuple(features[k] for k in keys),
                                 check_trace=False, strict=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return QueryGraph(frozen, keys, extras)
