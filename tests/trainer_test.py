"""Trainer: one training stage as an object (model, config, mesh, writer, checkpoints)."""

import jax
import numpy as np

from faq_jax import models, sharding, trainer
from faq_jax.config import demo


def _config():
    c = demo.get_config()
    c.batch_size = 32
    c.eval_batch_size = 152
    c.num_epochs = 1
    c.max_steps = 2
    c.log_every_steps = 1
    return c


class _Writer:
    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        self.scalars.setdefault(step, {}).update(scalars)


def test_fit_trains_checkpoints_and_resumes(tmp_path):
    config, writer = _config(), _Writer()
    model = models.create("resnet20", num_classes=10)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    evaluator = trainer.Evaluator(model, config, sharding.make_mesh(), writer)
    t = trainer.Trainer(evaluator, config, config, str(tmp_path / "ckpt"), num_train=1497,
                        eval_prefix="fp32")
    assert (t.total_steps, t.batches.micro, t.writer) == (2, 32, writer)
    fitted = t.fit(variables)
    assert fitted.grad_noise is None
    assert set(writer.scalars) == {1, 2} and "train/loss" in writer.scalars[2]
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), fitted.variables["params"],
                           jax.device_get(variables["params"]))
    assert any(jax.tree.leaves(changed))
    # A second fit of the same stage finds the last checkpoint and has nothing left to do.
    again = trainer.Trainer(evaluator, config, config, str(tmp_path / "ckpt"), num_train=1497,
                            eval_prefix="fp32").fit(variables)
    for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(fitted.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    result = evaluator(fitted.variables, 2, "fp32")
    assert result["count"] == 300 and writer.scalars[2]["fp32/count"] == 300
