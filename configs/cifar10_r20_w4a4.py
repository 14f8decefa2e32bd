"""FAQ W4A4 on CIFAR-10 ResNet-20 (first conv / fc weights, last ReLU and fc input 8-bit).

From the fp32 baseline of configs/cifar10_r20_fp32.py. Recipe (FAQ.md section 5, 4-bit,
shortened for CIFAR): calibrate, then 30 epochs at lr 0.0015 x 0.85 per epoch (ends ~1e-5),
SGD momentum 0.9, wd 1e-4, batch 128. Claim tested (FAQ.md section 8): 4-bit after
fine-tuning within noise of fp32; weight cosine (start vs end) near 1; calibration and
pretrained initialisation each worth something (ablations: --config.calib.enabled=False,
--config.init=random).

  python -m faq_jax.main --config=configs/cifar10_r20_w4a4.py --workdir=~/faq/cifar10_r20_w4a4 \
      --config.init_checkpoint=~/faq/cifar10_r20_fp32_weights
"""

import importlib.util
import os


def _base():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_r20_fp32.py")
    spec = importlib.util.spec_from_file_location("cifar10_r20_fp32", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(arg=None):
    base = _base()
    c = base.cifar10_base(4, 4)
    c.init = "pretrained"
    c.stages = "eval_fp32,calibrate,eval_quant,finetune"
    c.num_epochs = 30
    c.optim = base.common.optim_config(0.0015, "exponential", 1e-4)
    c.optim.decay_rate = 0.85
    return base.common.with_arg(c, arg)
