"""torchvision ResNets (and a torch CIFAR ResNet-20) vs their converted Flax twins.

Each torch model gets seeded random weights and non-trivial BatchNorm statistics and affine
parameters (zero or identity BN would hide a wrong mapping), is converted with
``weights_convert.mapping.convert``, and both run the same batch:

- eval mode: logits within 1e-4 relative error (max|a-b| / max|b|);
- train mode (batch statistics): logits and every updated running mean/var within 1e-4
  (torch and ``layers.BatchNorm`` both fold the *unbiased* variance into running_var).

ResNet-50/101/152 in train mode are compared in float64 (both sides): with batch statistics
over 8-32 values per channel, each block amplifies float32 rounding (relative error grows
~3e-6 per block to 6e-5 / 3e-4 / 1e-3 at the logits), while in float64 the two agree to ~1e-11,
which shows the float32 gap is rounding, not a mapping error. Their eval mode is float32.

The Flax side runs op by op (no ``jit``): for one forward of a deep net on CPU that is
several times faster than compiling it, and the compiled ops are shared between tests.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from faq_jax import models  # noqa: E402
from weights_convert import cli, mapping  # noqa: E402

TOL = 1e-4


def randomize_bn(model, seed: int):
    """Non-trivial BN running stats and affine params (torchvision inits them to 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _nhwc(x):
    return x.numpy().transpose(0, 2, 3, 1)


def check_parity(arch: str, hw: tuple[int, int], batch: int = 2, num_classes: int = 1000,
                 seed: int = 0, train_f64: bool = False) -> dict[str, float]:
    """Runs torch and Flax in eval and train mode; returns the measured relative errors."""
    torch.manual_seed(seed)
    tmodel = randomize_bn(cli.torch_reference(arch, num_classes), seed + 1)
    variables = mapping.convert(tmodel.state_dict(), arch)
    module = models.create(arch, num_classes=num_classes)
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed + 2))

    tmodel.eval()
    with torch.no_grad():
        ref_eval = tmodel(x).numpy()
    out_eval = module.apply(variables, _nhwc(x), train=False)
    errors = {"eval": rel_err(out_eval, ref_eval)}
    assert out_eval.shape == ref_eval.shape == (batch, num_classes)

    tmodel.train()
    if train_f64:
        tmodel.double()
        with jax.enable_x64(True):
            v64 = jax.tree.map(lambda a: a.astype(np.float64), variables)
            errors.update(_train_errors(tmodel, module, v64, x.double(), arch))
    else:
        errors.update(_train_errors(tmodel, module, variables, x, arch))
    print(f"{arch} {hw}: {errors}")
    assert all(e <= TOL for e in errors.values()), errors
    return errors


def _train_errors(tmodel, module, variables, x, arch: str) -> dict[str, float]:
    """One train-mode forward: logits and updated running stats, torch vs Flax."""
    with torch.no_grad():
        ref = tmodel(x).numpy()
    out, updates = module.apply(variables, _nhwc(x), train=True, mutable=["batch_stats"])
    assert out.dtype == ref.dtype
    ref_stats = mapping.convert(tmodel.state_dict(), arch)["batch_stats"]
    stats = max(jax.tree.leaves(jax.tree.map(rel_err, updates["batch_stats"], ref_stats)))
    return {"train": rel_err(out, ref), "running_stats": stats}


def test_resnet18_224():
    check_parity("resnet18", (224, 224))


def test_resnet34_odd_size():
    check_parity("resnet34", (97, 131))


def test_resnet50():
    check_parity("resnet50", (64, 64), train_f64=True)  # f32 train: 6e-5, close to TOL


@pytest.mark.slow
def test_resnet101():
    check_parity("resnet101", (64, 64), train_f64=True)


@pytest.mark.slow
def test_resnet152():
    check_parity("resnet152", (64, 64), train_f64=True)


def test_resnet20_cifar():
    check_parity("resnet20", (32, 32), batch=4, num_classes=10)


def test_state_dict_of_another_arch_fails_clearly():
    sd = torchvision.models.resnet34().state_dict()
    with pytest.raises(ValueError, match=r"does not fit resnet18[\s\S]*unexpected[\s\S]*"
                                         r"layer1\.2\.conv1\.weight"):
        mapping.convert(sd, "resnet18")
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch[\s\S]*fc\.weight.*\(512, 1000\)"):
        mapping.convert(sd, "resnet18", num_classes=1000)
    del sd["layer4.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing \(1\): batch_stats/layer4_1/bn2/var"):
        mapping.convert(sd, "resnet18")


def test_naming_rule_and_old_densenet_keys():
    sd = {
        "features.0.weight": np.zeros((64, 3, 3, 3)),
        "features.1.weight": np.zeros(64),
        "features.1.running_mean": np.zeros(64),
        "features.denselayer1.norm.1.weight": np.zeros(8),
        "features.denselayer1.norm.1.running_mean": np.zeros(8),
        "classifier.6.weight": np.zeros((10, 4096)),
        "Mixed_5b.branch1x1.conv.weight": np.zeros((64, 192, 1, 1)),
        "bn.num_batches_tracked": np.zeros(()),
    }
    sd = mapping.rename_old_keys(sd)
    names = {k: mapping.flax_name(k, sd) for k in sd}
    assert names == {
        "features.0.weight": ("params", "features_0/kernel"),
        "features.1.weight": ("params", "features_1/scale"),
        "features.1.running_mean": ("batch_stats", "features_1/mean"),
        "features.denselayer1.norm1.weight": ("params", "features/denselayer1/norm1/scale"),
        "features.denselayer1.norm1.running_mean": ("batch_stats",
                                                    "features/denselayer1/norm1/mean"),
        "classifier.6.weight": ("params", "classifier_6/kernel"),
        "Mixed_5b.branch1x1.conv.weight": ("params", "Mixed_5b/branch1x1/conv/kernel"),
        "bn.num_batches_tracked": None,
    }
