"""FAQ resnet50 W8A8 on ImageNet (paper Table 1).

Recipe: 1 epoch, lr 1e-4 constant, batch 256, SGD momentum 0.9, wd 1e-4.
Paper top-1 / top-5: 76.52 / 93.09 (fp32 baseline 76.15 / 92.87).

  python -m weights_convert --arch resnet50 --weights IMAGENET1K_V1 --out ~/faq/resnet50_fp32
  python -m faq_jax.main --config=configs/r50_w8a8.py --workdir=~/faq/r50_w8a8 \
      --config.init_checkpoint=~/faq/resnet50_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    return defaults.with_arg(defaults.paper_finetune("resnet50", 8), arg)
