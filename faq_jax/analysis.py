"""The paper's analysis measures (FAQ.md section 6).

- Gradient noise (Fig. 1): per conv/dense kernel, the cosine between the float SGD step
  ``δw_t = w_t - w_{t-1}`` and an exponential moving average (factor 0.9) of the quantized
  step ``Q(w_t) - Q(w_{t-1})``, Q being the layer's weight quantizer (its bits from the
  precision policy, l recomputed from each w as in training). :class:`GradNoise` is pure and
  jitted; ``trainer.Trainer`` runs it every step when ``config.analysis.grad_noise`` is set.
- Weight similarity (Fig. 2): per layer, the mean over output channels (neurons) of the
  cosine between a neuron's weights before and after training.

Both read the conv/dense kernels only (``kernel`` leaves): LSQ's learned step sizes, which
live beside them in ``params``, are quantizer settings, not weights, and are left out.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from faq_jax import keypaths
from faq_jax.policy import Policy


def _kernel_items(params: Any) -> list[tuple[str, Any]]:
    """(module path, kernel) of every conv/dense kernel of a ``params`` tree."""
    return list(keypaths.owners(params, "kernel").items())


def column_cosines(a: Any, b: Any, xp: Any = np) -> Any:
    """cos(a[:, j], b[:, j]) per column, with ``xp`` = numpy or jax.numpy.

    A zero vector has no direction: where either column is all zeros the cosine is 0 (no
    similarity), never 1. The gradient-noise and the weight-similarity measures both use
    this rule.
    """
    den = xp.sqrt(xp.sum(a * a, axis=0)) * xp.sqrt(xp.sum(b * b, axis=0))
    return xp.where(den > 0, xp.sum(a * b, axis=0) / xp.where(den > 0, den, 1.0), 0.0)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """cos(a, b) over all elements (:func:`column_cosines` of the flattened tensors)."""
    a, b = a.reshape(-1, 1).astype(jnp.float32), b.reshape(-1, 1).astype(jnp.float32)
    return column_cosines(a, b, jnp)[0]


class GradNoise:
    """Fig. 1's gradient-noise measure: cos(δw_t, EMA of the quantized step), per layer.

    ``state = gn.init(params)``, then after every update
    ``state, cos = gn.update(state, old_params, new_params)`` (jitted, no host sync):
    ``cos`` maps each kernel's module path to a scalar. With ``policy=None`` Q is the
    identity (cosine 1 for a constant step). The EMA starts at zero; the cosine does not
    depend on its scale, so no bias correction is needed.
    """

    def __init__(self, policy: Policy | None, ema: float = 0.9):
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"grad-noise EMA factor must lie in [0, 1), got {ema!r}")
        self.policy = policy
        self.ema = float(ema)
        self.update = jax.jit(self._update)
        # A real copy (not a forwarded input): fit donates the train state right after.
        self.copy = jax.jit(lambda params: jax.tree.map(lambda x: x * 1, params))

    def quantize(self, path: str, w: jax.Array, params: Any = None) -> jax.Array:
        """Q(w) with the layer's weight bits and a per-step l (what the forward pass uses);
        an LSQ layer's learned step is read from ``params`` (the tree ``w`` belongs to)."""
        if self.policy is None:
            return w
        name = self.policy.weight_step_param(path)
        step = None if name is None else keypaths.get(params, path)[name]
        return self.policy.quantize_weight(path, w, step)

    def init(self, params: Any) -> dict[str, jax.Array]:
        """Zero EMA of the quantized step, one per kernel."""
        return {path: jnp.zeros(jnp.shape(k), jnp.float32) for path, k in _kernel_items(params)}

    def _update(self, state: dict[str, jax.Array], old_params: Any, new_params: Any,
                ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        old = dict(_kernel_items(old_params))
        new_state, cos = {}, {}
        for path, w_new in _kernel_items(new_params):
            w_old = old[path]
            dq = self.quantize(path, w_new, new_params) - self.quantize(path, w_old, old_params)
            ema = self.ema * state[path] + (1.0 - self.ema) * dq.astype(jnp.float32)
            new_state[path] = ema
            cos[path] = _cosine(w_new - w_old, ema)
        return new_state, cos


def summarize_grad_noise(cos: dict[str, Any]) -> dict[str, Any]:
    """Host-side ``{"mean", "per_layer"}`` of one step's per-layer cosines."""
    per_layer = {k: float(v) for k, v in jax.device_get(cos).items()}
    mean = float(np.mean(list(per_layer.values()))) if per_layer else float("nan")
    return {"mean": mean, "per_layer": per_layer}


def neuron_cosines(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Cosine per output channel (last axis of a conv HWIO / dense (in, out) kernel), in
    float64; 0 for a neuron whose weights are all zero before or after."""
    a = np.asarray(before, np.float64).reshape(-1, before.shape[-1])
    b = np.asarray(after, np.float64).reshape(-1, after.shape[-1])
    return column_cosines(a, b)


def weight_similarity(before: Any, after: Any) -> dict[str, Any]:
    """Per-layer and overall mean neuron cosine between two ``params`` trees' kernels.

    ``mean`` averages over all neurons of the network (Fig. 2's number); ``per_layer``
    averages within each layer. A neuron whose weights are all zero before or after counts
    with cosine 0 (:func:`column_cosines`); ``zero_norm_neurons`` says how many there were.
    """
    per_layer, all_cos, zero = {}, [], 0
    flat_b = dict(_kernels(before))
    for path, k_after in _kernels(after):
        k_before = flat_b[path]
        cos = neuron_cosines(k_before, k_after)
        per_layer[path] = float(cos.mean())
        all_cos.append(cos)
        zero += int(np.sum(~np.any(k_before.reshape(-1, k_before.shape[-1]), axis=0)
                           | ~np.any(k_after.reshape(-1, k_after.shape[-1]), axis=0)))
    overall = float(np.concatenate(all_cos).mean()) if all_cos else float("nan")
    return {"mean": overall, "per_layer": per_layer, "zero_norm_neurons": zero}


def _kernels(params: Any) -> list[tuple[str, np.ndarray]]:
    return [(p, np.asarray(k)) for p, k in _kernel_items(jax.device_get(params))]


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - plotting is optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def layer_order(names: Any) -> list[str]:
    """Layer names with their numbers in numeric order (``layer1_2`` before ``layer1_10``):
    summaries hold them sorted as strings."""
    return sorted(names, key=lambda n: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                        for t in re.split(r"(\d+)", n)])


def plot_grad_noise(per_bits: dict[str, dict[str, float]], path: str | os.PathLike,
                    curves: dict[str, dict[str, list[tuple[int, float]]]] | None = None,
                    ) -> None:
    """Fig. 1 style: per-layer gradient-noise cosine, one line per precision.

    Args:
      per_bits: label (e.g. "W4A4") -> {layer: cosine} (``summary["grad_noise"]["per_layer"]``).
      path: output PNG.
      curves: optional label -> {layer: [(step, cosine)]}: adds a panel of the mean over
        layers against the step (the ``grad_noise/<layer>`` tags of
        :func:`faq_jax.writers.read_scalars`).
    """
    plt = _pyplot()
    ncols = 2 if curves else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    names = layer_order({n for layers in per_bits.values() for n in layers})
    for label, layers in per_bits.items():
        ax.plot(range(len(names)), [layers.get(n, np.nan) for n in names], "o-", label=label)
    if per_bits:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("cos(δw, EMA of quantized step)")
    ax.set_title("Gradient noise per layer (Fig. 1)")
    ax.grid(alpha=0.3)
    ax.legend()
    if curves:
        ax = axes[0][1]
        for label, layers in curves.items():
            steps = sorted({s for v in layers.values() for s, _ in v})
            by_step = {s: [] for s in steps}
            for v in layers.values():
                for s, c in v:
                    by_step[s].append(c)
            ax.plot(steps, [np.mean(by_step[s]) for s in steps], label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("mean over layers")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_weight_similarity(sims: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Fig. 2 style: per-layer mean neuron cosine (start vs end), one bar group per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = list(sims)
    names = layer_order(sims[labels[0]]["per_layer"]) if labels else []
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        vals = [sims[label]["per_layer"].get(n, np.nan) for n in names]
        ax.bar(np.arange(len(names)) + i * width, vals, width,
               label=f"{label} (mean {sims[label]['mean']:.4f})")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=90, fontsize=7)
    ax.set_ylabel("mean neuron cosine\n(float weights, start vs end)")
    ax.set_title("Weight similarity per layer (Fig. 2)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(runs: dict[str, dict[str, list[tuple[int, float]]]],
                  path: str | os.PathLike, offsets: dict[str, int] | None = None) -> None:
    """Training top-1 against the step per run, plus its validation results as markers.

    Args:
      runs: run label -> :func:`faq_jax.writers.read_scalars` of its workdir.
      path: output PNG.
      offsets: run label -> step its curve starts at (e.g. fine-tuning runs placed after
        the baseline's last step).
    """
    plt = _pyplot()
    offsets = offsets or {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, scalars in runs.items():
        off = offsets.get(label, 0)
        curve = scalars.get("train/top1", [])
        last = curve[-1][0] if curve else 0
        color = None
        if curve:
            s, v = zip(*curve, strict=True)
            line, = ax.plot(off + np.asarray(s), 100 * np.asarray(v), label=f"{label} (train)")
            color = line.get_color()
        for tag, pts in scalars.items():
            kind = tag.split("/")[0]
            if not tag.endswith("/top1") or kind == "train" or (off and kind == "fp32"):
                continue
            for step, value in pts:  # before fine-tuning: at its start; the rest: at the end
                x = off if kind == "quant_before" else off + (step or last)
                ax.plot([x], [value], "x" if kind != "quant_before" else "o", color=color,
                        ms=7)
    ax.set_xlabel("step (fine-tuning runs continue from the baseline's last step)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy: training (line), validation before (o) / after (x) fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
