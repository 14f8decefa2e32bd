"""Activation calibration (FAQ.md section 3), and LSQ's data-driven start, set once.

FAQ: the *unquantized* network (BN in inference mode) sees a few training batches. Every
activation quantizer takes the 99.99th (8-bit) or 99.9th (lower widths) percentile of its
tensor per batch; y_max is the maximum over batches, rounded up to a power of two, and
l = log2(y_max) - b. Since ceil(log2 .) is monotone, the layer sows its per-batch l and
the maximum over batches is that l. These l's are then frozen for fine-tuning.

LSQ (:mod:`faq_jax.lsq`), in the same pass: an activation quantizer's step starts at
``2 <|v|> / sqrt(Q_P)`` of the *first* batch only (the paper's "first batch of
activations"; its input comes from the unquantized network here, as FAQ's does), a conv/dense
layer's at the same formula of its current kernel (the weights fine-tuning starts from).
:func:`initialize` sets both; :func:`calibrate` is FAQ's half alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from faq_jax import keypaths, layers, lsq


def _sown_values(model: nn.Module, base: dict[str, Any], batches: Iterable[jax.Array],
                 need_all: bool) -> dict[str, Any]:
    """``{path: value}`` of the calibration pass: FAQ's l's (``.../lsb``, maximum over
    batches) and LSQ's activation steps (first batch). Only the first batch is read unless
    ``need_all`` (FAQ sites)."""

    @jax.jit
    def sow(base, images):
        _, sown = model.apply(base, images, train=False, mutable=[layers.CALIB])
        # A site sows a tuple, one value per call (a module applied twice sows twice): FAQ
        # keeps the largest l, LSQ the first call's step.
        return jax.tree_util.tree_map_with_path(
            lambda p, t: jnp.max(jnp.stack(t)) if keypaths.key_name(p[-1]) == "lsb" else t[0],
            sown[layers.CALIB], is_leaf=lambda x: isinstance(x, tuple))

    result = None
    for images in batches:
        # On the host: the sown values are scalars, and an eager op between arrays that
        # different batches left on different devices/shardings can stall a CPU run.
        flat = {k: np.asarray(v) for k, v in keypaths.flatten(sow(base, images)).items()}
        if result is None:
            result = flat
        else:  # later batches: only FAQ's l's change
            result.update({k: np.maximum(result[k], v) for k, v in flat.items()
                           if k.endswith(keypaths.SEP + "lsb")})
        if not need_all:
            break
    if result is None:
        raise ValueError("calibration received no batches")
    return result


def _lsb_tree(flat: dict[str, Any], quant: dict[str, Any]) -> dict[str, Any]:
    """The ``quant`` collection of the sown l's; ValueError where a quantizer was missed."""
    result = keypaths.unflatten({k: v for k, v in flat.items()
                                 if k.endswith(keypaths.SEP + "lsb")})
    expected = jax.tree.structure(quant)
    if jax.tree.structure(result) != expected:
        raise ValueError("calibration did not reach every activation quantizer: "
                         f"got {jax.tree.structure(result)}, expected {expected}")
    return jax.tree.map(lambda a, old: a.astype(old.dtype), result, quant)


def calibrate(model: nn.Module, variables: dict[str, Any], batches: Iterable[jax.Array],
              ) -> dict[str, Any]:
    """Returns the ``quant`` collection with calibrated l's (FAQ's quantizers only).

    Args:
      model: the quantized model (its policy gives each site's width and percentile).
      variables: ``params`` and ``batch_stats`` (and an existing ``quant`` to replace).
      batches: image batches (global arrays or NumPy), e.g. 5 training batches.
    """
    base = {k: v for k, v in variables.items() if k in ("params", "batch_stats", "quant")}
    if "quant" not in base:
        raise ValueError("the model has no FAQ activation quantizers to calibrate (is the "
                         "policy None, or every quantizer LSQ's? then use "
                         "calibrate.initialize)")
    flat = _sown_values(model, base, batches, need_all=True)
    lsq_sites = sorted(k for k in flat if not k.endswith(keypaths.SEP + "lsb"))
    if lsq_sites:
        raise ValueError(f"the network has LSQ quantizers ({lsq_sites[:3]}): "
                         "calibrate.initialize sets their steps with FAQ's l's")
    return _lsb_tree(flat, base["quant"])


def init_weight_steps(model: nn.Module, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every LSQ weight step at ``lsq.init_step`` of its current kernel."""
    policy = model.policy
    if not policy.uses_lsq():
        return params
    flat = keypaths.flatten(params)
    for path, kernel in keypaths.owners(params, "kernel").items():
        name = policy.weight_step_param(path)
        if name is None:
            continue
        key = f"{path}{keypaths.SEP}{name}"
        if key not in flat:
            raise ValueError(f"{path}: LSQ layer without its step parameter {name!r} (build "
                             "the parameters with this model's init)")
        s = lsq.init_step(kernel, policy.weight_bits(path), True)
        flat[key] = jnp.asarray(lsq.to_param(s, policy.lsq_pow2), jnp.asarray(flat[key]).dtype)
    return keypaths.unflatten(flat)


def initialize(model: nn.Module, variables: dict[str, Any],
               batches: Iterable[jax.Array] | None) -> dict[str, Any]:
    """``variables`` with every quantizer's data-driven start set, before fine-tuning.

    FAQ's activation l's (``quant``) from all ``batches`` (:func:`calibrate`); LSQ's
    activation steps (``params``) from the first batch; LSQ's weight steps (``params``) from
    the current kernels. ``batches=None`` sets the weight steps only: the activations keep
    their uncalibrated defaults (FAQ's no-calibration control, ``calib.enabled=False``).
    """
    out = dict(variables)
    out["params"] = init_weight_steps(model, variables["params"])
    if batches is None:
        return out
    base = {k: v for k, v in out.items() if k in ("params", "batch_stats", "quant")}
    quant = base.get("quant", {})
    flat = _sown_values(model, base, batches, need_all=bool(quant))
    if quant:
        out["quant"] = _lsb_tree(flat, quant)
    steps = {k: v for k, v in flat.items() if not k.endswith(keypaths.SEP + "lsb")}
    if steps:
        params = keypaths.flatten(out["params"])
        for key, value in steps.items():
            if key not in params:
                raise ValueError(f"calibration sowed {key!r}, which is not a parameter")
            params[key] = jnp.asarray(value, jnp.asarray(params[key]).dtype)
        out["params"] = keypaths.unflatten(params)
    return out
