"""The exported integer network and its file (``faq_jax.intnet`` v1, ``docs/export.md``).

An :class:`IntegerNetwork` is a layer graph (a JSON-able dict: nodes in execution order,
each with its op, inputs and integer attributes) plus the integer constants it names
(NumPy arrays). :func:`save` writes both into one ``.npz``; :func:`load` reads it back and
checks the format name and version. This module is the bottom of ``faq_jax.export``: the
exporter writes this format, the executor and the ONNX writer read it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

FORMAT = "faq_jax.intnet"
VERSION = 1


class ExportError(ValueError):
    """A network that cannot be exported as integers; the message names the layer."""


@dataclasses.dataclass
class IntegerNetwork:
    """The layer graph (``graph``: JSON-able dict) and its integer constants (``arrays``)."""

    graph: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return self.graph["nodes"]


def save(net: IntegerNetwork, path: str) -> None:
    """Writes ``net`` as one ``.npz``: the arrays plus ``__graph__`` (UTF-8 JSON bytes)."""
    blob = np.frombuffer(json.dumps(net.graph, indent=1).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, __graph__=blob, **net.arrays)


def load(path: str) -> IntegerNetwork:
    """Reads a file written by :func:`save`; checks format name and version."""
    with np.load(path, allow_pickle=False) as z:
        graph = json.loads(bytes(z["__graph__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__graph__"}
    if graph.get("format") != FORMAT or graph.get("version") != VERSION:
        raise ExportError(f"{path}: not a {FORMAT} v{VERSION} file "
                          f"(format={graph.get('format')!r}, version={graph.get('version')!r})")
    return IntegerNetwork(graph, arrays)


def int_dtype(bits: int, signed: bool) -> np.dtype:
    """The narrowest NumPy integer dtype (8, 16, 32 or 64 bits) holding ``bits``-bit codes."""
    for b in (8, 16, 32, 64):
        if bits <= b:
            return np.dtype(f"{'' if signed else 'u'}int{b}")
    raise ExportError(f"{bits} bits do not fit an integer dtype")
