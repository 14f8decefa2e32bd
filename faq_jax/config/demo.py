"""The embedded demo config (digits, ResNet-20, fp32 -> FAQ W3A3); no download needed.

``python -m faq_jax.main --workdir=/tmp/faq_demo`` uses this file when ``--config`` is
absent, and it takes overrides like any other: ``--config.num_epochs=2``.
"""

import ml_collections

from faq_jax.config import defaults


def get_config() -> ml_collections.ConfigDict:
    """The embedded demo: ResNet-20 on scikit-learn's digits, fp32 -> FAQ W3A3, a minute.

    Trains an fp32 baseline from scratch, evaluates it, calibrates, quantizes to W3A3
    (first/last layers 8-bit) and fine-tunes with FAQ's exponential decay. 3 bits, with
    the paper's weight clipping (k = 4.12, made for 4 bits) zeroing most small weights,
    cost this small network 12-16 points that fine-tuning wins back (W4A4 costs it about
    one point: too little to see on 300 test images).
    """
    c = defaults.get_base("resnet20", 3, 3, num_epochs=5, lr=0.01, schedule="exponential",
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
