"""fp32 baseline: CIFAR-10 ResNet-20 trained from scratch with faq_jax's own trainer.

The starting point of the CIFAR-10 FAQ runs (FAQ.md section 8). Reference (PACT, test set):
91.6 top-1 after a full schedule; our validation split is carved from the JPEG train set
(last 500 images per class) and runs lower. Default: 64 epochs, lr 0.1 x0.1 at 32 and 48.

  python -m faq_jax.main --config=configs/cifar10_r20_fp32.py --workdir=~/faq/cifar10_r20_fp32

Then save the trained weights for FAQ runs (benchmarks/cifar10_repro.py does this):
``faq_jax.pretrained.save(dir, {"params", "batch_stats"}, {"arch": "resnet20", ...})``.
"""

import os

from faq_jax import config_defaults as common

ARCHIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                       "cifar10-jpeg.tar.gz")


def cifar10_base(w_bits: int = 8, a_bits: int = 8):
    """resnet20 on the CIFAR-10 JPEG archive: 32x32, pad-crop-flip augmentation."""
    c = common.get_base("resnet20", w_bits, a_bits, dataset="cifar10")
    c.num_classes = 10
    c.data.archive = os.path.normpath(ARCHIVE)
    c.data.image_size = 32
    c.data.eval_resize = 32
    c.data.augment = "cifar"
    c.data.mean = (0.4914, 0.4822, 0.4465)
    c.data.std = (0.2470, 0.2435, 0.2616)
    c.data.num_train = 45_000
    c.data.shuffle_buffer = 8192
    c.batch_size = 128
    c.eval_batch_size = 500
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    return c


def get_config(arg=None):
    c = cifar10_base()
    c.quant.enabled = False
    c.init = "random"
    c.stages = "pretrain,eval_fp32"
    c.pretrain.num_epochs = 64
    c.pretrain.batch_size = 128
    c.pretrain.optim = common.optim_config(0.1, "step", 1e-4)
    c.pretrain.optim.step_epochs = (32, 48)
    return common.with_arg(c, arg)
