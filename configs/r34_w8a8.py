"""FAQ resnet34 W8A8 on ImageNet (paper Table 1).

Recipe: 1 epoch, lr 1e-4 constant, batch 256, SGD momentum 0.9, wd 1e-4.
Paper top-1 / top-5: 73.71 / 91.63 (fp32 baseline 73.30 / 91.42).

  python -m weights_convert --arch resnet34 --weights IMAGENET1K_V1 --out ~/faq/resnet34_fp32
  python -m faq_jax.main --config=configs/r34_w8a8.py --workdir=~/faq/r34_w8a8 \
      --config.init_checkpoint=~/faq/resnet34_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    return defaults.with_arg(defaults.paper_finetune("resnet34", 8), arg)
