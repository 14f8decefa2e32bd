"""FAQ resnet18 W8A8 on ImageNet (paper Table 1).

Recipe: 1 epoch, lr 1e-4 constant, batch 256, SGD momentum 0.9, wd 1e-4.
Paper top-1 / top-5: 70.02 / 89.32 (fp32 baseline 69.76 / 89.08).

  python -m weights_convert --arch resnet18 --weights IMAGENET1K_V1 --out ~/faq/resnet18_fp32
  python -m faq_jax.main --config=configs/r18_w8a8.py --workdir=~/faq/r18_w8a8 \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    return defaults.with_arg(defaults.paper_finetune("resnet18", 8), arg)
