"""SIGTERM (preemption) or Ctrl-C to a running job: it saves a checkpoint, exits, and the
restart resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["--config.stages=finetune", "--config.batch_size=32", "--config.num_epochs=3",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000",
        "--config.eval_every_epochs=100", "--verbosity=0"]  # INFO logs: train/loss per step


def _main(workdir, *extra):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, "-m", "faq_jax.main", f"--workdir={workdir}",
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "said"), [(signal.SIGTERM, "preempted"),
                                              (signal.SIGINT, "interrupted")])
def test_stop_signal_saves_and_restart_resumes(tmp_path, signum, said):
    wd = tmp_path / "w"
    p = _main(wd)
    lines = []
    deadline = time.time() + 400
    for line in p.stdout:  # wait until training steps are being logged
        lines.append(line)
        if "train/loss" in line or time.time() > deadline:
            break
    p.send_signal(signum)
    out, _ = p.communicate(timeout=300)
    log = "".join(lines) + out
    assert p.returncode != 0 and f"{said}: checkpoint saved at step" in log, log[-3000:]
    assert "Traceback" not in log.split("train/loss")[-1]
    saved = [int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit()]
    assert saved and max(saved) < 3 * (1497 // 32)
    if signum == signal.SIGINT:
        return  # the stop is the same from here on: resuming is checked once, below
    # The same command resumes from that step and finishes (stopping early on purpose).
    q = _main(wd, "--config.max_steps=" + str(max(saved) + 2), "--continue_changed")
    out, _ = q.communicate(timeout=600)
    assert q.returncode == 0, out[-3000:]
    assert f"resumed from {wd / 'checkpoints'} at step {max(saved)}" in out
