"""FAQ resnet34 W4A4 on ImageNet (paper Table 1).

Recipe: 110 epochs, lr 0.0015 x 0.936 per epoch, batch 256, SGD momentum 0.9, wd 1e-4.
Paper top-1 / top-5: 73.31 / 91.32 (fp32 baseline 73.30 / 91.42).

  python -m weights_convert --arch resnet34 --weights IMAGENET1K_V1 --out ~/faq/resnet34_fp32
  python -m faq_jax.main --config=configs/r34_w4a4.py --workdir=~/faq/r34_w4a4 \
      --config.init_checkpoint=~/faq/resnet34_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    return defaults.with_arg(defaults.paper_finetune("resnet34", 4), arg)
