"""FAQ W8A8 on CIFAR-10 ResNet-20, from the fp32 baseline of configs/cifar10_r20_fp32.py.

Recipe (FAQ.md section 5, 8-bit): calibrate, then 1 epoch at lr 1e-4 constant, SGD momentum
0.9, wd 1e-4. Claim tested (FAQ.md section 8): 8-bit after one epoch >= fp32; right after
quantization (before fine-tuning) already close to fp32. Measured (benchmarks/RESULTS.md,
from the 10-epoch 80.04 baseline): 79.54 before, 79.90 after fine-tuning.

  python -m faq_jax.main --config=configs/cifar10_r20_w8a8.py --workdir=~/faq/cifar10_r20_w8a8 \
      --config.init_checkpoint=~/faq/cifar10_r20_fp32_weights
"""

from faq_jax.config import defaults

# ../shared/data/cifar10-jpeg.tar.gz and cifar10-test-jpeg.tar.gz beside the repository.
ARCHIVE = defaults.shared_cifar10_archive(__file__)
TEST_ARCHIVE = defaults.shared_cifar10_test_archive(__file__)


def get_config(arg=None):
    c = defaults.cifar10_base(8, 8, ARCHIVE, TEST_ARCHIVE)
    c.init = "pretrained"
    c.stages = "eval_fp32,calibrate,eval_quant,finetune"
    c.num_epochs = 1
    c.optim = defaults.optim_config(1e-4, "constant", 1e-4)
    return defaults.with_arg(c, arg)
