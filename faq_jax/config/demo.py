"""The embedded demo config (digits, ResNet-20, fp32 -> FAQ W4A4); no download needed.

``python -m faq_jax.main --workdir=/tmp/faq_demo`` uses this file when ``--config`` is
absent, and it takes overrides like any other: ``--config.num_epochs=2``.
"""

import ml_collections

from faq_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    """The embedded demo: ResNet-20 on scikit-learn's digits, fp32 -> FAQ W4A4, CPU minutes.

    Trains an fp32 baseline from scratch, evaluates it, calibrates, quantizes to W4A4
    (first/last layers 8-bit) and fine-tunes with FAQ's exponential decay.
    """
    c = defaults.get_base("resnet20", 4, 4, num_epochs=5, lr=0.01, schedule="exponential",
                          weight_decay=5e-4, dataset="digits")
    c.num_classes = 10
    c.init = "random"
    c.stages = "pretrain,eval_fp32,calibrate,eval_quant,finetune"
    c.data.image_size = 8
    c.data.eval_resize = 8
    c.data.augment = "none"
    c.data.num_train = 0
    c.data.shuffle_buffer = 2048
    c.optim.decay_rate = 0.7
    c.batch_size = 64
    c.eval_batch_size = 64
    c.pretrain.num_epochs = 8
    c.pretrain.batch_size = 64
    c.pretrain.optim = defaults.optim_config(0.1, "exponential", 5e-4)
    c.pretrain.optim.decay_rate = 0.8
    c.log_every_steps = 50
    c.checkpoint_every_steps = 200
    return c
