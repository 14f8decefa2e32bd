"""The embedded demo (what `python -m faq_jax.main` runs without --config).

ResNet-20 on scikit-learn's 8x8 digits (no download): fp32 baseline trained from scratch
(8 epochs), calibrated, quantized to W4A4 (first/last layers 8-bit), fine-tuned 5 epochs.
Measured (2-core CPU, 44 s): fp32 94.00, W4A4 before fine-tuning 93.00, after 92.67 top-1
on the 300 held-out digits (one image = 0.33 points).

  python -m faq_jax.main --config=configs/digits_r20_w4a4.py --workdir=/tmp/faq_digits
"""

from faq_jax.config import defaults, demo


def get_config(arg=None):
    return defaults.with_arg(demo.get_config(), arg)
