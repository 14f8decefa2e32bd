"""torchvision state dicts -> faq_jax Flax variables, by one naming rule for every arch.

faq_jax names its submodules after torchvision's state-dict keys, a numeric index joined to
its parent by ``_`` (``layer1.0.conv1.weight`` -> ``layer1_0/conv1/kernel``,
``features.denseblock1.denselayer1.norm1.weight`` -> ``features/denseblock1/denselayer1/
norm1/scale``), so conversion is a rule, not a table per network:

- 4-D ``weight`` (conv, OIHW) -> ``kernel`` HWIO;
- 2-D ``weight`` (linear, (out, in)) -> ``kernel`` (in, out);
- 1-D ``weight``/``bias`` beside a ``running_mean`` (BatchNorm) -> params ``scale``/``bias``,
  ``running_mean``/``running_var`` -> batch_stats ``mean``/``var``;
- other ``bias`` -> params ``bias``; ``num_batches_tracked`` is dropped.

The result is checked against the Flax model's own variable tree (shapes only, traced with
``jax.eval_shape``): a missing, unexpected or mis-shaped key raises ValueError naming it.
This module imports no torch: it accepts torch tensors or numpy arrays.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from faq_jax import keypaths, models

# Old DenseNet checkpoints spell ``denselayer1.norm.1.weight``; torchvision renames them to
# ``norm1`` in densenet.py's _load_state_dict with this very pattern.
_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_BN_STATS = {"running_mean": "mean", "running_var": "var"}
_SHOW = 5  # offending keys listed per kind in an error


def to_numpy(value: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array-like."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().float().numpy()
    return np.array(value, dtype=np.float32)


def _module_path(parts: list[str]) -> str:
    """torch module parts -> Flax path: a numeric part joins its parent with ``_``."""
    out: list[str] = []
    for part in parts:
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return "/".join(out)


def rename_old_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Applies torchvision's DenseNet key fix (``norm.1`` -> ``norm1``); other keys unchanged."""
    out = {}
    for key, value in state_dict.items():
        m = _DENSENET_OLD.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def flax_name(key: str, state_dict: Mapping[str, Any]) -> tuple[str, str] | None:
    """(collection, "module/path/leaf") for a torch key, or None for a dropped key.

    ``state_dict`` is consulted to tell a BatchNorm ``weight`` (it has a ``running_mean``
    beside it) from other 1-D weights, and for the weight's rank.
    """
    *parts, leaf = key.split(".")
    if not parts:
        raise ValueError(f"state-dict key {key!r} names no module")
    prefix, mod = ".".join(parts), _module_path(parts)
    is_bn = f"{prefix}.running_mean" in state_dict
    if leaf == "num_batches_tracked":
        return None
    if leaf in _BN_STATS:
        return "batch_stats", f"{mod}/{_BN_STATS[leaf]}"
    if leaf == "bias":
        return "params", f"{mod}/bias"
    if leaf == "weight":
        ndim = len(np.shape(state_dict[key]))
        if is_bn and ndim == 1:
            return "params", f"{mod}/scale"
        if ndim in (2, 4):
            return "params", f"{mod}/kernel"
        raise ValueError(f"state-dict key {key!r}: a {ndim}-D weight that is neither a conv "
                         "(4-D), a linear layer (2-D) nor a BatchNorm (1-D with running_mean)")
    raise ValueError(f"state-dict key {key!r}: unknown parameter kind {leaf!r}")


def to_flax_layout(name: str, array: np.ndarray) -> np.ndarray:
    """torch layout -> Flax layout for a params/kernel leaf."""
    if not name.endswith("/kernel"):
        return array
    if array.ndim == 4:  # OIHW -> HWIO
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    return np.ascontiguousarray(array.T)  # (out, in) -> (in, out)


@functools.lru_cache(maxsize=16)
def expected_shapes(arch: str, num_classes: int, kwargs: tuple[tuple[str, Any], ...]
              ) -> dict[str, tuple[int, ...]]:
    """{"collection/module/leaf": shape} of the float Flax model (traced, not computed)."""
    module = models.create(arch, num_classes=num_classes, **dict(kwargs))
    size = models.spec(arch).min_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    flat = keypaths.flatten({c: shapes[c] for c in ("params", "batch_stats") if c in shapes})
    return {k: tuple(v.shape) for k, v in flat.items()}


def _classifier(arch: str, kwargs: Mapping[str, Any]) -> str:
    """Module path of the classifier (the model's ``last`` role)."""
    spec = models.spec(arch)
    factory = getattr(importlib.import_module(f"faq_jax.models.{spec.module}"), spec.factory)
    return factory(**kwargs).roles()["last"]


def num_classes(variables: Mapping[str, Any], arch: str, **model_kwargs: Any) -> int:
    """The classifier width of converted ``variables`` of ``arch``."""
    flat = keypaths.flatten(variables)
    return _classes_from(flat, arch, model_kwargs)


def _classes_from(flat: Mapping[str, np.ndarray], arch: str, kwargs: Mapping[str, Any]) -> int:
    last = _classifier(arch, kwargs)
    kernel = flat.get(f"params/{last}/kernel")
    if kernel is None:
        torch_key = last.replace("_", ".").replace("/", ".") + ".weight"
        raise ValueError(f"not a {arch} state dict: it has no classifier weight "
                         f"{torch_key!r} (-> {last}/kernel)")
    return int(kernel.shape[-1])


def _fmt(items: list[str]) -> str:
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def convert(state_dict: Mapping[str, Any], arch: str, *, num_classes: int | None = None,
            **model_kwargs: Any) -> dict[str, dict[str, Any]]:
    """Converts a torchvision ``state_dict`` of ``arch`` to Flax variables, checked.

    Args:
      state_dict: torch key -> tensor (or numpy array), e.g. ``model.state_dict()``.
      arch: a key of ``faq_jax.models.ARCHS``; the result must fit that model exactly.
      num_classes: classifier width; None reads it off the state dict's classifier.
      **model_kwargs: architecture options passed to ``faq_jax.models.create``.

    Returns:
      ``{"params": ..., "batch_stats": ...}``: nested dicts of float32 numpy arrays, as
      ``faq_jax.models.create(arch).init`` lays them out.

    Raises:
      ValueError: unknown arch, an unconvertible key, or a result that does not match the
        Flax model (missing / unexpected keys, wrong shapes), naming the offending keys.
    """
    models.spec(arch)  # unknown arch -> ValueError naming the known ones
    state_dict = rename_old_keys(state_dict)
    flat: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}  # flax path -> torch key, for error messages
    for key, value in state_dict.items():
        target = flax_name(key, state_dict)
        if target is None:
            continue
        path = "/".join(target)
        if path in flat:
            raise ValueError(f"torch keys {source[path]!r} and {key!r} both map to {path!r}")
        flat[path] = to_flax_layout(path, to_numpy(value))
        source[path] = key

    if num_classes is None:
        num_classes = _classes_from(flat, arch, model_kwargs)
    expected = expected_shapes(arch, num_classes, tuple(sorted(model_kwargs.items())))
    missing = sorted(set(expected) - set(flat))
    order = {k: i for i, k in enumerate(flat)}  # state-dict order reads best
    unexpected = sorted(set(flat) - set(expected), key=order.__getitem__)
    mismatched = sorted(k for k in set(flat) & set(expected) if flat[k].shape != expected[k])
    if missing or unexpected or mismatched:
        lines = [f"state dict does not fit {arch} (num_classes={num_classes}): it has "
                 f"{len(flat)} tensors (num_batches_tracked aside), {arch} expects "
                 f"{len(expected)}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): "
                         f"{_fmt([f'{source[k]} (-> {k})' for k in unexpected])}")
        if mismatched:
            lines.append(f"  shape mismatch ({len(mismatched)}): " + _fmt([
                f"{source[k]} -> {k}: got {flat[k].shape}, {arch} expects {expected[k]}"
                for k in mismatched]))
        lines.append(f"  is this really a {arch} checkpoint?")
        raise ValueError("\n".join(lines))
    tree = keypaths.unflatten(flat)
    return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}
