"""FAQ ablation (paper Table 2), ResNet-18 W4A4: batch 256 doubled at epochs 55, 150, 160 up to 2048, 165 epochs, by gradient accumulation of 256-example micro-batches (the paper's lr schedule for this row is not stated).

The paper ran its ablations "with the same initial and final learning rates in all cases": lr
starts at 0.0015 and decays per epoch to the 110-epoch run's last value (0.0015 * 0.936^109 =
1.1e-6) over 165 epochs, so the factor is 0.936^(109/164) = 0.957 per epoch. The 512-example
phase starts at lr 1.3e-4, the 1024 phase at 2.0e-6, the 2048 phase at 1.3e-6. (Keeping 0.936
would have trained those phases at ~1e-7: 0.0015 * 0.936^150 = 7.4e-8.)

Paper top-1: 69.96 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_batchsched.py --workdir=~/faq/r18_w4a4_batchsched \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax.config import defaults


def get_config(arg=None):
    c = defaults.paper_finetune("resnet18", 4)
    c.num_epochs = 165
    c.batch_size = 256
    c.micro_batch_size = 256
    c.batch_schedule = ((0, 256), (55, 512), (150, 1024), (160, 2048))
    # Same first and last learning rate as the 110-epoch run (decay after epochs 1..164).
    c.optim.decay_rate = round(c.optim.decay_rate ** (109 / 164), 6)
    return defaults.with_arg(c, arg)
