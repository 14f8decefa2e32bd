"""FAQ ablation (paper Table 2), ResNet-18 W4A4: 60 epochs at batch 400.

The paper ran 30, 60 and 110 epochs "with the same initial and final learning rates in all
cases": lr starts at 0.0015 and decays per epoch to the 110-epoch run's last value
(0.0015 * 0.936^109 = 1.1e-6), so the factor is 0.936^(109/59) = 0.885 per epoch.

Paper top-1: 69.40 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_ep60_b400.py --workdir=~/faq/r18_w4a4_ep60_b400 \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    c = defaults.paper_finetune("resnet18", 4)
    c.num_epochs = 60
    c.batch_size = 400
    # Same first and last learning rate as the 110-epoch run (decay after epochs 1..109).
    c.optim.decay_rate = round(c.optim.decay_rate ** (109 / 59), 6)
    return defaults.with_arg(c, arg)
