"""FAQ ablation (paper Table 2), ResNet-18 W4A4: step decay 1e-3 -> 1e-6 (x0.1 at epochs 30, 60, 90).

Paper top-1: 69.90 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_stepdecay.py --workdir=~/faq/r18_w4a4_stepdecay \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    c = defaults.paper_finetune("resnet18", 4)
    c.optim.lr = 1e-3
    c.optim.schedule = "step"
    c.optim.step_epochs = (30, 60, 90)
    c.optim.step_factor = 0.1
    return defaults.with_arg(c, arg)
