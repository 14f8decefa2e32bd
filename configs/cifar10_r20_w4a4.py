"""FAQ W4A4 on CIFAR-10 ResNet-20 (first conv / fc weights, last ReLU and fc input 8-bit).

From the fp32 baseline of configs/cifar10_r20_fp32.py. Recipe (FAQ.md section 5, 4-bit,
shortened for CIFAR): calibrate, then 30 epochs at lr 0.0015 x 0.85 per epoch (ends ~1e-5),
SGD momentum 0.9, wd 1e-4, batch 128. Claim tested (FAQ.md section 8): 4-bit after
fine-tuning within noise of fp32; weight cosine (start vs end) near 1; calibration and
pretrained initialisation each worth something (ablations: --config.calib.enabled=False,
--config.init=random). Measured with 4 epochs (lr x0.6 per epoch; benchmarks/RESULTS.md,
from the 10-epoch 80.04 baseline): 71.26 before, 79.16 after fine-tuning.

  python -m faq_jax.main --config=configs/cifar10_r20_w4a4.py --workdir=~/faq/cifar10_r20_w4a4 \
      --config.init_checkpoint=~/faq/cifar10_r20_fp32_weights
"""

from faq_jax.config import defaults

# ../shared/data/cifar10-jpeg.tar.gz and cifar10-test-jpeg.tar.gz beside the repository.
ARCHIVE = defaults.shared_cifar10_archive(__file__)
TEST_ARCHIVE = defaults.shared_cifar10_test_archive(__file__)


def get_config(arg=None):
    c = defaults.cifar10_base(4, 4, ARCHIVE, TEST_ARCHIVE)
    c.init = "pretrained"
    c.stages = "eval_fp32,calibrate,eval_quant,finetune"
    c.num_epochs = 30
    c.optim = defaults.optim_config(0.0015, "exponential", 1e-4)
    c.optim.decay_rate = 0.85
    return defaults.with_arg(c, arg)
