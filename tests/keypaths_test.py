"""One key-path rule: ``"a/b/c"`` strings for variable trees, both ways."""

import jax
import jax.numpy as jnp

from faq_jax import keypaths, models


def test_flatten_unflatten_round_trip():
    tree = {"params": {"layer1_0": {"conv1": {"kernel": 2.0}, "bn1": {"scale": 1.0}}},
            "quant": {"act": {"lsb": -3.0}}}
    flat = keypaths.flatten(tree)
    assert flat == {"params/layer1_0/bn1/scale": 1.0, "params/layer1_0/conv1/kernel": 2.0,
                    "quant/act/lsb": -3.0}
    assert keypaths.unflatten(flat) == tree
    assert keypaths.get(tree, "params/layer1_0/bn1") == {"scale": 1.0}
    assert keypaths.owners(tree, "lsb") == {"quant/act": -3.0}


def test_module_paths_of_a_model_are_its_policy_paths():
    model = models.create("resnet20", num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    kernels = keypaths.owners(shapes["params"], "kernel")
    assert "layer2_0/downsample_0" in kernels and "fc" in kernels
    weights, _ = models.quant_sites(shapes)
    assert weights == list(kernels)
