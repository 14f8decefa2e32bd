"""The embedded demo (what `python -m faq_jax.main` runs without --config).

ResNet-20 on scikit-learn's 8x8 digits (no download): fp32 baseline trained from scratch
(8 epochs), calibrated, quantized to W3A3 (first/last layers 8-bit), fine-tuned 5 epochs.
Measured (2-core CPU under load, 91 s; about a minute idle): fp32 94.00, W3A3 before
fine-tuning 78.33, after 93.33 top-1 on the 300 held-out digits (after - before +15.00,
paired 95% interval [+10.27, +19.73]); seeds 1-3 in tests/demo_test.py.

  python -m faq_jax.main --config=configs/digits_r20_w3a3.py --workdir=/tmp/faq_digits
"""

from faq_jax.config import defaults, demo


def get_config(arg=None):
    return defaults.with_arg(demo.get_config(), arg)
