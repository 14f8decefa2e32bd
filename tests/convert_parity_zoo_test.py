"""torchvision -> Flax parity for VGG-16-bn, DenseNet-161 and Inception-v3 (random weights).

Each torchvision model gets seeded random weights and non-trivial BatchNorm affine
parameters and running statistics (set from a real batch, then perturbed, so activations
stay O(1) through the whole depth), is converted with ``weights_convert.mapping`` and
compared with the Flax model: eval-mode logits, and one training-mode forward (batch
statistics, dropout off) including the updated running statistics and, for Inception, the
aux logits.
"""

import re

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from faq_jax import models  # noqa: E402
from weights_convert import mapping  # noqa: E402

TOL = 1e-4  # max|a - b| / max|b|, float32

# (arch, torchvision constructor kwargs, Flax options without dropout, input size): small
# inputs where the net allows (64 gives VGG a 2x2 map, which AdaptiveAvgPool2d((7, 7)) bins
# unevenly); Inception's aux head needs the full 299.
CASES = [
    ("vgg16_bn", {}, {"dropout": 0.0}, 64),
    ("densenet161", {}, {}, 64),
    ("inception_v3", {"aux_logits": True, "transform_input": True, "init_weights": True},
     {"dropout": 0.0}, 299),
]


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _randomize(model, x, seed: int) -> None:
    """Random biases, BN affine params, and running stats = perturbed real batch stats."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.05, generator=g)
        for m in bns:
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.2, generator=g)
            m.momentum = 1.0  # running stats := this batch's statistics
        model.train()
        model(x)
        for m in bns:
            std = m.running_var.sqrt()
            m.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=g))
            m.running_var.mul_(torch.empty_like(std).uniform_(0.7, 1.4, generator=g))
            m.momentum = 0.1
    model.eval()


def _tree_rel_err(flax_tree, torch_tree) -> float:
    errs = jax.tree.map(_rel_err, flax_tree, torch_tree)
    return max(jax.tree.leaves(errs))


@pytest.mark.slow
@pytest.mark.parametrize("arch,tv_kwargs,no_dropout,size", CASES, ids=[c[0] for c in CASES])
def test_logits_match_torchvision(arch, tv_kwargs, no_dropout, size):
    torch.manual_seed(0)
    tmodel = getattr(torchvision.models, arch)(weights=None, **tv_kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    xt, xj = torch.from_numpy(x), np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    _randomize(tmodel, torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)), 1)
    variables = mapping.convert(tmodel.state_dict(), arch)

    # Eval mode: running statistics, dropout off (Flax side keeps torchvision's rates).
    with torch.no_grad():
        want = tmodel(xt).numpy()
    module = models.create(arch)
    got = jax.jit(lambda v, x: module.apply(v, x))(variables, xj)
    err = _rel_err(got, want)
    print(f"{arch} eval {size}x{size}: rel err {err:.2e}")
    assert got.shape == want.shape
    assert err <= TOL

    # Training mode: batch statistics and running-stat updates; dropout off on both sides.
    for m in tmodel.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tmodel.train()
    with torch.no_grad():
        want = tmodel(xt)
    want = [w.numpy() for w in want] if isinstance(want, tuple) else [want.numpy()]
    module = models.create(arch, **no_dropout)
    got, updates = jax.jit(lambda v, x: module.apply(v, x, train=True,
                                                     mutable=["batch_stats"]))(variables, xj)
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(want)  # Inception: (logits, aux logits)
    errs = [_rel_err(g, w) for g, w in zip(got, want, strict=True)]
    stats_err = _tree_rel_err(updates["batch_stats"],
                              mapping.convert(tmodel.state_dict(), arch)["batch_stats"])
    print(f"{arch} train {size}x{size}: rel err {errs}, running stats {stats_err:.2e}")
    assert max(errs) <= TOL
    assert stats_err <= TOL


_NEW_KEY = re.compile(r"(denselayer\d+\.)(norm|relu|conv)([12])\.")


def test_densenet_old_key_spelling_converts():
    torch.manual_seed(0)
    sd = torchvision.models.densenet161(weights=None).state_dict()
    old = {_NEW_KEY.sub(r"\1\2.\3.", k): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    new_vars, old_vars = mapping.convert(sd, "densenet161"), mapping.convert(old,
                                                                                 "densenet161")
    assert jax.tree.structure(new_vars) == jax.tree.structure(old_vars)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, new_vars, old_vars)))
