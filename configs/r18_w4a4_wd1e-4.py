"""FAQ ablation (paper Table 2), ResNet-18 W4A4: weight decay 1e-4 instead of 0.5e-4.

Paper top-1: 69.59 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_wd1e-4.py --workdir=~/faq/r18_w4a4_wd1e-4 \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    c = defaults.paper_finetune("resnet18", 4)
    c.optim.weight_decay = 1e-4
    return defaults.with_arg(c, arg)
