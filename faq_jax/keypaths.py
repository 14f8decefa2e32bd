"""Variable trees as flat ``"a/b/c"`` paths: the one rule every part of faq_jax uses.

A path joins the keys from the root to a leaf with ``/``: ``params/layer1_0/conv1/kernel``
in a variables tree, ``layer1_0/conv1`` for the module that owns ``kernel``. Module paths
(``"/".join(module.path)``) are the same strings, so policies, calibrated l's in
``summary.json``, converted checkpoints and exported graph nodes all name a layer alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

SEP = "/"


def key_name(key: Any) -> str:
    """One key of a ``jax.tree_util`` key path as a string (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def join(keypath: Any) -> str:
    """A ``jax.tree_util`` key path as ``"a/b/c"``."""
    return SEP.join(key_name(k) for k in keypath)


def flatten(tree: Any) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` of every leaf of ``tree``, in ``jax.tree_util`` order."""
    return {join(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts from ``{"a/b/c": leaf}`` (the inverse of :func:`flatten` on dicts)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEP)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def get(tree: Mapping[str, Any], path: str) -> Any:
    """The subtree (or leaf) of nested dicts at ``"a/b"``."""
    for key in path.split(SEP):
        tree = tree[key]
    return tree


def owners(tree: Any, leaf_name: str) -> dict[str, Any]:
    """``{module path: leaf}`` of every leaf called ``leaf_name`` (e.g. ``"kernel"``)."""
    suffix = SEP + leaf_name
    return {p[: -len(suffix)]: v for p, v in flatten(tree).items() if p.endswith(suffix)}
