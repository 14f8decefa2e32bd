"""FAQ W8A8 on CIFAR-10 ResNet-20, from the fp32 baseline of configs/cifar10_r20_fp32.py.

Recipe (FAQ.md section 5, 8-bit): calibrate, then 1 epoch at lr 1e-4 constant, SGD momentum
0.9, wd 1e-4. Claim tested (FAQ.md section 8): 8-bit after one epoch >= fp32; right after
quantization (before fine-tuning) already close to fp32.

  python -m faq_jax.main --config=configs/cifar10_r20_w8a8.py --workdir=~/faq/cifar10_r20_w8a8 \
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
    c = base.cifar10_base(8, 8)
    c.init = "pretrained"
    c.stages = "eval_fp32,calibrate,eval_quant,finetune"
    c.num_epochs = 1
    c.optim = base.common.optim_config(1e-4, "constant", 1e-4)
    return base.common.with_arg(c, arg)
