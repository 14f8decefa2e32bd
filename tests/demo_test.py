"""The embedded demo (``python -m faq_jax.main`` without --config) shows what FAQ does, and
shows it quietly.

Measured with the demo's config (W3A3, one device, jax 0.10.2), top-1 % on the 300
held-out digits:

    seed  fp32    W3A3 before  W3A3 after  after - before (paired 95% interval)
    0     94.00   78.33        93.33       +15.00 [+10.27, +19.73]
    1     95.33   79.33        92.00       +12.67 [+8.17, +17.16]
    2     94.67   82.33        91.67        +9.33 [+5.33, +13.33]
    3     94.67   78.33        90.33       +12.00 (interval not recorded)

Thresholds. Per seed (0, 1, 2): fine-tuning gains (after > before) and ends within 6 points
of fp32 (worst measured: 4.34 below). Over the three seeds (the same 300 held-out images,
each image's gain averaged over the seeds): the 95% interval of the mean gain excludes 0 and
the mean gain is at least 5 points (measured: +12.33). The gain is not bounded per seed: it
is bounded by the quantization loss, which depends on the CPU's float rounding through the
whole run; on another x86 machine one seed lost only ~5 points to W3A3 (89.00 before) and
gained +3.33 (b/c 8/18), FAQ's behaviour, not a failure.
The test took 174 s on the 2-core machine under load (the three runs share one compilation
cache).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from faq_jax import paired

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 25  # measured: 13 (6 stage lines, the table); plain lines every 30 s add more


@pytest.mark.slow
def test_demo_recovers_the_quantization_loss_over_seeds_and_is_quiet(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           # The three runs compile the same programs: compile once.
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    before, after = [], []
    for seed in (0, 1, 2):
        workdir = tmp_path / f"seed{seed}"
        r = subprocess.run([sys.executable, "-m", "faq_jax.main", f"--workdir={workdir}",
                            f"--config.seed={seed}"], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=900)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-3000:]
        summary = json.loads((workdir / "summary.json").read_text())
        cmp = summary["after_vs_before"]
        print(seed, summary["fp32"]["top1"], cmp)
        assert cmp["n"] == 300 and cmp["diff"] > 0, cmp
        before.append(paired.unpack(summary["quant_before"]["correct"], 300))
        after.append(paired.unpack(summary["quant_after"]["correct"], 300))
        assert summary["quant_after"]["top1"] >= summary["fp32"]["top1"] - 6.0, summary
        # The console: the stages' progress lines and the table, no library logs.
        lines = out.splitlines()
        assert len(lines) <= MAX_LINES, out
        assert "orbax" not in out and "Traceback" not in out, out
        assert not [line for line in lines if line[:2] in ("I0", "I1", "W0", "W1")], out
        for stage in ("pretrain:", "eval fp32:", "calibrate:", "finetune:"):
            assert any(line.startswith(stage) for line in r.stderr.splitlines()), (stage, out)
        for text in ("W3A3 before fine-tuning", "W3A3 after fine-tuning",
                     "after - before:", "paired 95% interval",
                     f"results: {workdir / 'summary.json'}",
                     f"checkpoints: {workdir / 'checkpoints'} (fine-tuned)"):
            assert text in r.stdout, (text, r.stdout)
    # The seeds share the 300 held-out images: average each image's gain over the seeds and
    # take the interval over images, not over 900 draws that are not independent.
    gain = 100.0 * (np.mean(after, axis=0) - np.mean(before, axis=0))
    half = 1.96 * gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() - half > 0 and gain.mean() >= 5.0, (gain.mean(), half)
