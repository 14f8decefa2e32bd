"""FAQ densenet161 W8A8 on ImageNet (paper Table 1).

Recipe: 1 epoch, lr 1e-4 constant, batch 256, SGD momentum 0.9, wd 1e-4.
Paper top-1 / top-5: 77.84 / 93.91 (fp32 baseline 77.65 / 93.80).

  python -m weights_convert --arch densenet161 --weights IMAGENET1K_V1 --out ~/faq/densenet161_fp32
  python -m faq_jax.main --config=configs/densenet161_w8a8.py --workdir=~/faq/densenet161_w8a8 \
      --config.init_checkpoint=~/faq/densenet161_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    return defaults.with_arg(defaults.paper_finetune("densenet161", 8), arg)
