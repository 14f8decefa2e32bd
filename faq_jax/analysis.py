"""The paper's analysis measures (FAQ.md section 6).

- Weight similarity (Fig. 2): per layer, the mean over output channels (neurons) of the
  cosine between a neuron's weights before and after training.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def neuron_cosines(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Cosine per output channel (last axis of a conv HWIO / dense (in, out) kernel)."""
    a = np.asarray(before, np.float64).reshape(-1, before.shape[-1])
    b = np.asarray(after, np.float64).reshape(-1, after.shape[-1])
    num = np.sum(a * b, axis=0)
    den = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)


def weight_similarity(before: Any, after: Any) -> dict[str, Any]:
    """Per-layer and overall mean neuron cosine between two ``params`` trees' kernels."""
    per_layer, all_cos = {}, []
    flat_b = dict(_kernels(before))
    for path, k_after in _kernels(after):
        cos = neuron_cosines(flat_b[path], k_after)
        per_layer[path] = float(cos.mean())
        all_cos.append(cos)
    overall = float(np.concatenate(all_cos).mean()) if all_cos else float("nan")
    return {"mean": overall, "per_layer": per_layer}


def _kernels(params: Any) -> list[tuple[str, np.ndarray]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "kernel":
            out.append(("/".join(keys[:-1]), np.asarray(leaf)))
    return out
