"""He et al.'s option-A CIFAR ResNets: the PyTorch reference and the checkpoint key map.

The community checkpoints of these networks (akamaster/pytorch_resnet_cifar10, and the many
repositories that copy its ``resnet.py``) share one format: ``torch.save({"state_dict": sd,
...})`` of a ``DataParallel`` model, so every key starts with ``module.``; blocks
``layer{1,2,3}.{i}`` with ``conv{1,2}`` / ``bn{1,2}``; option-A shortcuts without parameters;
the classifier ``linear``. :func:`reference` builds that network in PyTorch (``--verify`` and
the tests run it); :data:`KEY_MAP` maps its keys to faq_jax's ``cifar_resnet*`` variables;
:func:`convert` applies the map and explains, in one line, a state dict that does not fit
(another depth, a torchvision-style option-B ResNet, a wider or narrower network).

torch is imported only by :func:`reference`; :func:`convert` takes torch tensors or numpy
arrays.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from faq_jax import keypaths, lazy_imports
from faq_jax.models import resnet_cifar
from weights_convert import mapping

PREFIX = "cifar_resnet"

# The key map: torch key (DataParallel's ``module.`` stripped) -> Flax variable
# ("collection/module/path/leaf"). Conv weights go OIHW -> HWIO, ``linear.weight`` is
# transposed; ``num_batches_tracked`` (newer torch versions save it) is dropped.
KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"conv1\.weight", r"params/conv1/kernel"),
    (r"bn1\.weight", r"params/bn1/scale"),
    (r"bn1\.bias", r"params/bn1/bias"),
    (r"bn1\.running_mean", r"batch_stats/bn1/mean"),
    (r"bn1\.running_var", r"batch_stats/bn1/var"),
    (r"layer([123])\.(\d+)\.conv([12])\.weight", r"params/layer\1_\2/conv\3/kernel"),
    (r"layer([123])\.(\d+)\.bn([12])\.weight", r"params/layer\1_\2/bn\3/scale"),
    (r"layer([123])\.(\d+)\.bn([12])\.bias", r"params/layer\1_\2/bn\3/bias"),
    (r"layer([123])\.(\d+)\.bn([12])\.running_mean", r"batch_stats/layer\1_\2/bn\3/mean"),
    (r"layer([123])\.(\d+)\.bn([12])\.running_var", r"batch_stats/layer\1_\2/bn\3/var"),
    (r"linear\.weight", r"params/linear/kernel"),
    (r"linear\.bias", r"params/linear/bias"),
)
DROPPED = re.compile(r"(.+\.)?num_batches_tracked")
_COMPILED = tuple((re.compile(k), v) for k, v in KEY_MAP)
_BLOCK = re.compile(r"layer([123])\.(\d+)\.")
_SHOW = 3  # keys named per kind in an error


def is_cifar_resnet(arch: str) -> bool:
    return arch.startswith(PREFIX)


def depth(arch: str) -> int:
    """20 for ``cifar_resnet20``; ValueError for an arch of another family or depth."""
    d = arch.removeprefix(PREFIX)
    if not arch.startswith(PREFIX) or not d.isdigit() or int(d) not in resnet_cifar.CIFAR_DEPTHS:
        raise ValueError(f"not an option-A CIFAR ResNet: {arch!r} (known: "
                         f"{', '.join(PREFIX + str(k) for k in resnet_cifar.CIFAR_DEPTHS)})")
    return int(d)


def flax_name(key: str) -> str | None:
    """The Flax variable of a torch key by :data:`KEY_MAP`, or None if no row matches."""
    for pattern, target in _COMPILED:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(target)
    return None


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict without DataParallel's ``module.`` prefix (when every key has it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A Flax variable's shape in torch's layout (for messages that name torch keys)."""
    if path.endswith("/kernel"):
        return (*shape[3:], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]
    return shape


def _keys(items: list[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(repr(k) for k in items[:_SHOW]) + more


def _blocks_per_stage(keys: list[str]) -> tuple[int, ...]:
    n = {1: 0, 2: 0, 3: 0}
    for key in keys:
        m = _BLOCK.match(key)
        if m:
            n[int(m.group(1))] = max(n[int(m.group(1))], int(m.group(2)) + 1)
    return n[1], n[2], n[3]


def _diagnose(keys: list[str], arch: str) -> str | None:
    """The likely reason a state dict is not ``arch``'s: another family or another depth."""
    option_b = [k for k in keys if ".downsample." in k or ".shortcut." in k]
    fc = [k for k in keys if k.startswith("fc.")]
    if option_b or fc:
        what = []
        if option_b:
            what.append(f"{len(option_b)} shortcut tensors ({_keys(option_b)})")
        if fc:
            what.append(f"a classifier named 'fc' ({_keys(fc)})")
        hint = ""
        if option_b and _blocks_per_stage(keys) == (3, 3, 3):
            hint = "; a torchvision-style CIFAR ResNet-20 converts with --arch resnet20"
        return (f"a torchvision-style (option-B) ResNet state dict: it has "
                f"{' and '.join(what)}, but {arch} has parameter-free option-A shortcuts and "
                f"a classifier named 'linear'{hint}")
    stages = _blocks_per_stage(keys)
    n = resnet_cifar.CIFAR_DEPTHS[depth(arch)]
    if any(stages) and stages != (n, n, n):
        if len(set(stages)) == 1 and 6 * stages[0] + 2 in resnet_cifar.CIFAR_DEPTHS:
            d = 6 * stages[0] + 2
            return (f"it holds a ResNet-{d} ({stages[0]} blocks per stage; convert it with "
                    f"--arch {PREFIX}{d}), not a ResNet-{depth(arch)} ({n} blocks per stage)")
        return (f"it has {stages} blocks per stage, {arch} has {(n, n, n)} (a ResNet of "
                "another depth)")
    return None


def convert(state_dict: Mapping[str, Any], arch: str, *, num_classes: int | None = None
            ) -> dict[str, dict[str, Any]]:
    """Converts a community checkpoint's state dict to ``arch``'s Flax variables, checked.

    Args:
      state_dict: torch key -> tensor (or numpy array); a ``module.`` prefix on every key
        (DataParallel) is stripped.
      arch: ``cifar_resnet{20,32,44,56,110}``.
      num_classes: classifier width; None reads it off ``linear.weight``.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays.

    Raises:
      ValueError (one line): keys no row of :data:`KEY_MAP` matches, missing keys, shape
        mismatches, each naming the keys, with the likely cause (another depth and the
        ``--arch`` that fits it; a torchvision-style option-B ResNet).
    """
    depth(arch)
    sd = strip_prefix(state_dict)
    keys = [k for k in sd if not DROPPED.fullmatch(k)]
    if not keys:
        raise ValueError("the state dict is empty")
    flat: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}  # flax path -> torch key
    unmatched = []
    for key in keys:
        path = flax_name(key)
        if path is None:
            unmatched.append(key)
            continue
        flat[path] = mapping.to_flax_layout(path, mapping.to_numpy(sd[key]))
        source[path] = key
    if num_classes is None:
        w = flat.get("params/linear/kernel")
        num_classes = int(w.shape[-1]) if w is not None and w.ndim == 2 else 10
    expected = mapping.expected_shapes(arch, num_classes, ())
    missing = [_torch_key(p) for p in expected if p not in flat]
    extra = unmatched + [source[p] for p in flat if p not in expected]
    mismatched = [f"{source[p]!r} is {_torch_shape(p, flat[p].shape)}, {arch} expects "
                  f"{_torch_shape(p, expected[p])}"
                  for p in flat if p in expected and flat[p].shape != expected[p]]
    if missing or extra or mismatched:
        parts = []
        if extra:
            parts.append(f"unexpected keys ({len(extra)}): {_keys(extra)}")
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_keys(missing)}")
        if mismatched:
            more = f" and {len(mismatched) - _SHOW} more" if len(mismatched) > _SHOW else ""
            parts.append(f"shape mismatch ({len(mismatched)}): "
                         + "; ".join(mismatched[:_SHOW]) + more)
        cause = _diagnose(keys, arch)
        head = f"not a {arch} state dict" + (f": {cause}" if cause else "")
        raise ValueError(f"{head} ({'; '.join(parts)})")
    tree = keypaths.unflatten(flat)
    return {"params": tree["params"], "batch_stats": tree["batch_stats"]}


def _torch_key(path: str) -> str:
    """The torch key a Flax variable comes from (the inverse of :data:`KEY_MAP`)."""
    coll, *mods, leaf = path.split("/")
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
            "var": "running_var"}.get(leaf, leaf)
    return ".".join([*(m.replace("_", ".") for m in mods), leaf])


def reference(arch: str, num_classes: int = 10) -> Any:
    """The PyTorch network of ``arch``, as the community implementation defines it.

    conv3x3 without bias, BatchNorm2d, ReLU; option-A shortcut
    ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``; global average
    pool; ``linear``. Weights: kaiming-normal convs and linear (random; load a state dict).
    """
    n = resnet_cifar.CIFAR_DEPTHS[depth(arch)]
    return _torch_classes()(n, num_classes)


@functools.lru_cache(maxsize=1)
def _torch_classes() -> Any:
    torch = lazy_imports.torch()
    nn, F = torch.nn, torch.nn.functional

    class OptionA(nn.Module):
        """Every second pixel, planes // 4 zero channels before and after (no parameters)."""

        def __init__(self, planes: int):
            super().__init__()
            self.pad = planes // 4

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)

    class BasicBlock(nn.Module):
        def __init__(self, in_planes: int, planes: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = OptionA(planes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self, n: int, num_classes: int):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            in_planes = 16
            for stage, planes in enumerate((16, 32, 64)):
                blocks = []
                for i in range(n):
                    blocks.append(BasicBlock(in_planes, planes, 2 if stage and not i else 1))
                    in_planes = planes
                setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.linear = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    nn.init.kaiming_normal_(m.weight)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    return ResNet
