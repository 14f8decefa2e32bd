"""fp32 baseline: CIFAR-10 ResNet-20 trained from scratch with faq_jax's own trainer.

The starting point of the CIFAR-10 FAQ runs (FAQ.md section 8). Reference (PACT, test set):
91.6 top-1 after a full schedule; our validation split is carved from the JPEG train set
(last 500 images per class) and runs lower. Default: 64 epochs, lr 0.1 x0.1 at 32 and 48.
A 10-epoch version (lr steps at 5 and 7) measured 80.04 top-1 on the 5,000 validation images.
For FAQ on a converged network, start from the published CIFAR ResNets instead
(benchmarks/cifar10_pretrained.py).

  python -m faq_jax.main --config=configs/cifar10_r20_fp32.py --workdir=~/faq/cifar10_r20_fp32

Then save the trained weights for FAQ runs:
``faq_jax.converted.save(dir, {"params", "batch_stats"}, {"arch": "resnet20", ...})``.
"""

from faq_jax.config import defaults

# ../shared/data/cifar10-jpeg.tar.gz and cifar10-test-jpeg.tar.gz beside the repository.
ARCHIVE = defaults.shared_cifar10_archive(__file__)
TEST_ARCHIVE = defaults.shared_cifar10_test_archive(__file__)


def get_config(arg=None):
    c = defaults.cifar10_base(8, 8, ARCHIVE, TEST_ARCHIVE)
    c.quant.enabled = False
    c.init = "random"
    c.stages = "pretrain,eval_fp32"
    c.pretrain.num_epochs = 64
    c.pretrain.batch_size = 128
    c.pretrain.optim = defaults.optim_config(0.1, "step", 1e-4)
    c.pretrain.optim.step_epochs = (32, 48)
    return defaults.with_arg(c, arg)
