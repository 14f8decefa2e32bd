"""FAQ ablation (paper Table 2), ResNet-18 W4A4: 60 epochs at batch 400.

Paper top-1: 69.40 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_ep60_b400.py --workdir=~/faq/r18_w4a4_ep60_b400 \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax import config_defaults as common


def get_config(arg=None):
    c = common.paper_finetune("resnet18", 4)
    c.num_epochs = 60
    c.batch_size = 400
    return common.with_arg(c, arg)
