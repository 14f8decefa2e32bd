"""FAQ vgg16_bn W8A8 on ImageNet (paper Table 1).

Recipe: 1 epoch, lr 1e-4 constant, batch 256, SGD momentum 0.9, wd 1e-4.
Paper top-1 / top-5: 73.66 / 91.56 (fp32 baseline 73.36 / 91.50).

  python -m weights_convert --arch vgg16_bn --weights IMAGENET1K_V1 --out ~/faq/vgg16_bn_fp32
  python -m faq_jax.main --config=configs/vgg16bn_w8a8.py --workdir=~/faq/vgg16bn_w8a8 \
      --config.init_checkpoint=~/faq/vgg16_bn_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    return defaults.with_arg(defaults.paper_finetune("vgg16_bn", 8), arg)
