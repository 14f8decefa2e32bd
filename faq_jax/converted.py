"""faq_jax converted checkpoints: the on-disk format of pretrained (torchvision) weights.

A converted checkpoint is a folder::

    DIR/manifest.json   {"format": "faq_jax.converted", "format_version": 1, "arch": ...,
                         "num_classes": ..., "source": ...,
                         "input_normalization": {"mean": [r, g, b], "std": [r, g, b]}, ...}
    DIR/variables/      the Flax variables {"params", "batch_stats"}, saved with orbax

``python -m weights_convert`` writes it with :func:`save`; training reads it with
:func:`load`, and :func:`input_normalization` says how the weights expect their input
normalised (``(x - mean) / std`` on [0, 1] RGB). Both live here so the format is defined in
one place; this module needs no torch.

``input_normalization`` is optional (folders converted before it existed lack it): it is
then ImageNet's for every arch but ``resnet20``, since torchvision's ImageNet weights were
all those converters accepted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from faq_jax.workdir import CheckpointError  # a path that is no readable converted checkpoint

FORMAT = "faq_jax.converted"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VARIABLES = "variables"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# No published weights: a user's own state dict, trained with whatever normalisation.
_UNKNOWN_NORMALIZATION = ("resnet20",)

Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def default_normalization(arch: str) -> Normalization | None:
    """The input normalisation of ``arch``'s usual weights: ImageNet's (torchvision's
    ImageNet weights; the community CIFAR ResNet checkpoints were trained with it too), or
    None where unknown (``resnet20``)."""
    return None if arch in _UNKNOWN_NORMALIZATION else (IMAGENET_MEAN, IMAGENET_STD)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the converted checkpoint at ``path``, validated."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"converted checkpoint {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"not a faq_jax converted checkpoint: {str(path)!r} is a file, "
                              "expected the folder written by `python -m weights_convert`")
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"not a faq_jax converted checkpoint: {str(path)!r} has no "
                              f"{MANIFEST} (write one with `python -m weights_convert`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"not a faq_jax converted checkpoint: {str(mpath)!r} is "
                              f"unreadable or corrupt ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"not a faq_jax converted checkpoint: {str(mpath)!r} does not "
                              f"declare format {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{str(mpath)!r} has format_version {version!r}; this faq_jax "
                              f"reads version {FORMAT_VERSION} (re-convert the weights)")
    for field in ("arch", "num_classes"):
        if field not in manifest:
            raise CheckpointError(f"not a faq_jax converted checkpoint: {str(mpath)!r} lacks "
                                  f"{field!r}")
    norm = manifest.get("input_normalization")
    if norm is not None:
        try:
            if not isinstance(norm, Mapping):
                raise ValueError(f"expected {{'mean': [...], 'std': [...]}}, got {norm!r}")
            check_normalization(norm.get("mean"), norm.get("std"))
        except ValueError as e:
            raise CheckpointError(f"{str(mpath)!r}: bad input_normalization: {e}") from None
    return manifest


def check_normalization(mean: Any, std: Any) -> Normalization:
    """(mean, std) as tuples of 3 floats, std > 0; ValueError otherwise."""
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ValueError(f"mean and std must be 3 numbers each, got {mean!r}, {std!r}") from None
    if len(m) != 3 or len(s) != 3 or not all(v > 0 for v in s):
        raise ValueError(f"mean and std must be 3 numbers each (one per RGB channel), std > 0; "
                         f"got mean={list(m)}, std={list(s)}")
    return m, s


def input_normalization(path: str | os.PathLike) -> Normalization | None:
    """(mean, std) the converted weights at ``path`` expect: ``(x - mean) / std`` on [0, 1]
    RGB, per channel. None when unknown: recorded as null (``resnet20``, which has no
    published weights, converted without ``--mean``/``--std``), or a ``resnet20`` folder
    converted before the field existed.

    Use it to set ``config.data.mean`` / ``config.data.std`` of a run that starts from the
    checkpoint (``config.init_checkpoint``)."""
    manifest = read_manifest(path)
    if "input_normalization" not in manifest:  # older converter: torchvision weights only
        return default_normalization(manifest["arch"])
    norm = manifest["input_normalization"]
    return None if norm is None else check_normalization(norm["mean"], norm["std"])


def normalization_mismatch(path: str | os.PathLike, mean: Any, std: Any) -> str | None:
    """A message when the checkpoint at ``path`` records another input normalisation than
    ``mean``/``std`` (a run's ``config.data``); None when they agree or it is unknown."""
    norm = input_normalization(path)
    if norm is None or np.allclose(np.asarray(norm, np.float64),
                                   np.asarray((tuple(mean), tuple(std)), np.float64),
                                   rtol=0, atol=5e-4):
        return None
    return (f"converted checkpoint {str(path)!r} expects inputs normalised with mean "
            f"{list(norm[0])}, std {list(norm[1])}, but the data pipeline uses mean "
            f"{list(mean)}, std {list(std)}: set --config.data.mean and --config.data.std "
            "to the checkpoint's values (faq_jax.converted.input_normalization)")


def load(path: str | os.PathLike, *, arch: str | None = None) -> dict[str, Any]:
    """Reads the variables ``{"params", "batch_stats"}`` of a converted checkpoint.

    Args:
      path: the folder written by ``python -m weights_convert`` (or :func:`save`).
      arch: if given, the arch the caller builds; a checkpoint of another arch fails.

    Returns:
      Nested dicts of numpy float32 arrays, ready for ``module.apply`` or a train state.

    Raises:
      CheckpointError (a ValueError): missing path, missing/corrupt manifest, unknown
        format version, arch mismatch, or unreadable variables.
    """
    path = Path(path).absolute()
    manifest = read_manifest(path)
    if arch is not None and manifest["arch"] != arch:
        raise CheckpointError(f"checkpoint {str(path)!r} holds {manifest['arch']} weights but "
                              f"config.arch is {arch}")
    vpath = path / VARIABLES
    ckptr = ocp.StandardCheckpointer()
    try:
        meta = ckptr.metadata(vpath)
        meta = getattr(meta, "item_metadata", meta)
        # Restore onto the host as numpy: no sharding to guess, the caller places them.
        target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), _tree(meta))
        variables = ckptr.restore(vpath, target)
    except Exception as e:  # orbax raises many kinds; say which file is at fault
        raise CheckpointError(f"cannot read the variables of converted checkpoint "
                              f"{str(path)!r}: {type(e).__name__}: {e}") from e
    finally:
        ckptr.close()
    return jax.tree.map(np.asarray, _tree(variables))


def _tree(tree: Any) -> Any:
    """Plain nested dicts (orbax may hand back its own mapping types)."""
    if isinstance(tree, Mapping):
        return {k: _tree(v) for k, v in tree.items()}
    return tree


def not_replaceable(path: str | os.PathLike) -> str | None:
    """Why ``path`` may not be overwritten (None: it is a converted checkpoint and nothing
    else: a valid manifest and the variables folder, no other file)."""
    path = Path(path)
    try:
        read_manifest(path)
    except CheckpointError as e:
        return str(e)
    others = sorted(p.name for p in path.iterdir() if p.name not in (MANIFEST, VARIABLES))
    if others:
        return f"it holds files the converter did not write: {others[:5]}"
    if Path.cwd().resolve().is_relative_to(path.resolve()):
        return "it is (or contains) the current directory"
    return None


def save(path: str | os.PathLike, variables: Mapping[str, Any], manifest: Mapping[str, Any],
         *, overwrite: bool = False) -> Path:
    """Writes a converted checkpoint atomically: a temp folder beside ``path``, then rename.

    Args:
      path: the output folder. It must not exist or be empty, unless ``overwrite``.
      variables: ``{"params": ..., "batch_stats": ...}`` (numpy or jax arrays).
      manifest: at least ``arch`` and ``num_classes``; ``format``/``format_version`` added.
      overwrite: replace an existing non-empty ``path``.

    Returns:
      The absolute output path. On any error nothing is left at ``path``'s place.
    """
    path = Path(path).absolute()
    for field in ("arch", "num_classes"):
        if field not in manifest:
            raise ValueError(f"manifest needs {field!r}")
    norm = manifest.get("input_normalization")
    if norm is not None:
        mean, std = check_normalization(norm["mean"], norm["std"])
        manifest = {**manifest, "input_normalization": {"mean": list(mean), "std": list(std)}}
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{str(path)!r} exists and is not empty (pass --force / "
                                  "overwrite=True to replace a converted checkpoint there)")
        why = not_replaceable(path)
        if why:
            raise FileExistsError(f"refusing to replace {str(path)!r}: {why}. --force / "
                                  "overwrite=True only replaces a folder this converter wrote; "
                                  "choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        variables = jax.tree.map(np.asarray, _tree(variables))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / VARIABLES, variables)
            ckptr.wait_until_finished()
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
