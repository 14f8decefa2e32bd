"""FAQ ablation (paper Table 2), ResNet-18 W4A4: no activation calibration: y_max = 2^(b/2) - 1.

Paper top-1: 69.19 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_nocalib.py --workdir=~/faq/r18_w4a4_nocalib \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    c = defaults.paper_finetune("resnet18", 4)
    c.calib.enabled = False
    c.stages = "eval_fp32,eval_quant,finetune"
    return defaults.with_arg(c, arg)
