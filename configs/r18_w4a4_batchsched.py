"""FAQ ablation (paper Table 2), ResNet-18 W4A4: batch 256 doubled at epochs 55, 150, 160 up to 2048, 165 epochs, by gradient accumulation of 256-example micro-batches (the paper's lr schedule for this row is not stated; the 4-bit exponential decay is kept).

Paper top-1: 69.96 (FAQ 110 epochs: 69.82).

  python -m faq_jax.main --config=configs/r18_w4a4_batchsched.py --workdir=~/faq/r18_w4a4_batchsched \
      --config.init_checkpoint=~/faq/resnet18_fp32 --config.data.data_dir=~/tensorflow_datasets
"""

from faq_jax import config_defaults as common


def get_config(arg=None):
    c = common.paper_finetune("resnet18", 4)
    c.num_epochs = 165
    c.batch_size = 256
    c.micro_batch_size = 256
    c.batch_schedule = ((0, 256), (55, 512), (150, 1024), (160, 2048))
    return common.with_arg(c, arg)
