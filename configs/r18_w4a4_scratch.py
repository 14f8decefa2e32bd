"""FAQ ablation (paper Table 2), ResNet-18 W4A4: no pretraining: random init, lr 0.1 x 0.901 per epoch (arg 'step': 0.1 x0.1 at epochs 30, 60, 85, 95), 110 epochs, calibration skipped (nothing to calibrate from).

Paper top-1: 69.24 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_scratch.py --workdir=~/faq/r18_w4a4_scratch \
      --config.data.data_dir=~/tensorflow_datasets
  python -m faq_jax.main --config=configs/r18_w4a4_scratch.py:step --workdir=~/faq/r18_w4a4_scratch_step ...
"""

from faq_jax import config_defaults as common


def get_config(arg=None):
    c = common.paper_finetune("resnet18", 4)
    c.init = "random"
    c.calib.enabled = False
    c.stages = "finetune"
    c.optim.lr = 0.1
    if arg == "step" or (arg or "").startswith("step,"):
        c.optim.schedule = "step"
        c.optim.step_epochs = (30, 60, 85, 95)
        c.optim.step_factor = 0.1
        arg = arg[5:] or None
    else:
        c.optim.schedule = "exponential"
        c.optim.decay_rate = 0.901
    return common.with_arg(c, arg)
