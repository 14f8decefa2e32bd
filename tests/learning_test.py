"""Learning happens: fp32 training on the embedded digits, then FAQ fine-tuning at W4A4.

One run of the default job (``faq_jax.config.demo.get_config()``: ResNet-20 on scikit-learn's
digits, 1497 training / 300 validation images, 10 classes) shortened to 2 fp32 epochs (46
steps of 64) and 1 W4A4 fine-tuning epoch (23 steps): pretrain, eval_fp32, calibrate,
eval_quant, finetune.

Measured with this exact config for seeds 0-4 (8 fake CPU devices, jax 0.10.2), top-1 % /
mean eval loss over all 300 validation digits:

    seed  fp32            W4A4 before FAQ   W4A4 after FAQ   gain (points)  loss after/before
    0     85.33 / 0.789   82.00 / 0.887     93.33 / 0.251    +11.3          0.28
    1     63.67 / 2.840   57.67 / 2.955     92.33 / 0.412    +34.7          0.14
    2     61.67 / 3.145   55.67 / 3.578     91.00 / 0.363    +35.3          0.10
    3     72.67 / 1.545   70.33 / 1.555     91.33 / 0.309    +21.0          0.20
    4     85.33 / 0.977   84.33 / 0.948     89.33 / 0.380     +5.0          0.40

Two fp32 epochs leave the network undertrained (and its BN running statistics noisy: 62-85%),
so part of what fine-tuning recovers is further training of the quantized network; the
test's claim is only that FAQ fine-tuning of the W4A4 network makes it measurably better.
W2A2 was tried as a sharper case and is not usable here: on seeds 0 and 1 (the two tried)
the W2A2 network sat at chance (10%) before and after fine-tuning, its eval loss rising
(3.31 -> 26.4, 2.85 -> 54.3).

Thresholds (each holds for all five seeds, with the margin stated; the test runs seed 0):
- fp32 top-1 >= 50%: 5x chance, 11.7 points below the worst seed (61.67%);
- W4A4 top-1 gain >= 3 points (worst seed: +5.0, margin 2 points = 6 images) and W4A4 top-1
  after >= 85% (worst: 89.33%);
- W4A4 eval loss after <= 0.6 x before (worst seed: 0.40).
"""

import pytest

from faq_jax import train
from faq_jax.config import demo


def _config(seed: int):
    c = demo.get_config()  # pretrain,eval_fp32,calibrate,eval_quant,finetune
    c.quant.w_bits = c.quant.a_bits = 4  # the measurements above are W4A4's
    c.seed = seed
    c.pretrain.num_epochs = 2
    c.num_epochs = 1
    c.eval_batch_size = 152  # 300 validation digits in 2 batches (the second padded)
    c.checkpoint_every_steps = 1000
    c.analysis.weight_similarity = False
    return c


@pytest.mark.slow
def test_fp32_training_and_faq_finetuning_learn(tmp_path):
    summary = train.train_and_evaluate(_config(seed=0), str(tmp_path))
    fp32, before, after = summary["fp32"], summary["quant_before"], summary["quant_after"]
    print(f"fp32 {fp32['top1']:.2f}/{fp32['loss']:.3f}  W4A4 before {before['top1']:.2f}/"
          f"{before['loss']:.3f}  after {after['top1']:.2f}/{after['loss']:.3f}")
    assert fp32["count"] == before["count"] == after["count"] == 300
    # (a) fp32 training learns: far above chance (10%).
    assert fp32["top1"] >= 50.0, fp32
    # (b) FAQ fine-tuning improves the quantized network.
    assert after["top1"] >= before["top1"] + 3.0, (before, after)
    assert after["top1"] >= 85.0, after
    assert after["loss"] <= 0.6 * before["loss"], (before, after)
