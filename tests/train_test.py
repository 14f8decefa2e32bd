"""The FAQ job end to end on the embedded digits: stages, resume, and bad input."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from faq_jax import checkpointing, train, workdir
from faq_jax.config import defaults, demo


def _config(**overrides):
    c = demo.get_config()
    c.stages = "calibrate,finetune"
    c.batch_size = 32
    c.eval_batch_size = 152  # 300 eval digits: 2 batches, the second padded
    c.num_epochs = 1
    c.log_every_steps = 2
    c.checkpoint_every_steps = 1000
    c.analysis.weight_similarity = True
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def _params(result):
    return jax.tree.leaves(result["variables"]["params"])


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path):
    straight = train.train_and_evaluate(_config(max_steps=6), str(tmp_path / "a"))
    # Same experiment, stopped after 3 updates, then restarted with the full budget.
    train.train_and_evaluate(_config(max_steps=3), str(tmp_path / "b"))
    assert "3" in os.listdir(tmp_path / "b" / "checkpoints")
    resumed = train.train_and_evaluate(_config(max_steps=6), str(tmp_path / "b"),
                                       continue_changed=True)
    for a, b in zip(_params(straight), _params(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(straight["variables"]["quant"]),
                    jax.tree.leaves(resumed["variables"]["quant"]), strict=True):
        assert float(a) == float(b)
    # Exact evaluation: all 300 validation digits counted once.
    assert resumed["quant_after"]["count"] == 300
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["quant_after"]["top1"] == pytest.approx(straight["quant_after"]["top1"])
    assert 0.9 < summary["weight_cosine"]["mean"] <= 1.0


def test_bad_config_values_fail_before_compute(tmp_path):
    cases = [
        ({"quant.w_bits": 1}, "w_bits"),
        ({"quant.a_bits": 33}, "a_bits"),
        ({"calib.percentile_8bit": 100.5}, "percentile_8bit"),
        ({"optim.lr": -0.1}, "lr"),
        ({"arch": "resnet7"}, "unknown arch"),
        ({"quant.rules": (("layer9_9/conv1", 4, None),)}, "layer9_9"),
        ({"stages": "calibrate,fine_tune"}, "fine_tune"),
        ({"batch_size": 30}, "batch_size"),
        ({"compute_dtype": "float16"}, "compute_dtype.*bfloat16_outputs"),
        ({"init": "pretrained", "init_checkpoint": str(tmp_path / "nope")}, "init_checkpoint"),
        ({"log_every_steps": 0}, "log_every_steps"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"checkpoint_every_steps": -5}, "checkpoint_every_steps"),
        ({"batch_schedule": ((1, 32),)}, "batch_schedule.*epoch 0"),
        ({"batch_schedule": ((0, 32), (0, 64))}, "batch_schedule.*increase"),
        ({"stages": "pretrain,finetune", "pretrain.batch_size": 0}, "pretrain.batch_size"),
    ]
    for overrides, match in cases:
        with pytest.raises(ValueError, match=match):
            train.train_and_evaluate(_config(**overrides), str(tmp_path / "w"))
    fractional = defaults.get_base("resnet20", 4, 4, num_epochs=1.5, dataset="digits")
    with pytest.raises(ValueError, match="num_epochs.*whole number"):
        train.train_and_evaluate(fractional, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_workdir_of_another_experiment_is_refused(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps({"arch": "resnet50", "w_bits": 8}))
    (tmp_path / "summary.json").write_text(json.dumps({"fp32": {"top1": 76.1}}))
    with pytest.raises(ValueError, match="holds another experiment.*arch"):
        train.train_and_evaluate(_config(), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["experiment.json", "summary.json"]


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path):
    wd = tmp_path / "w"
    train.train_and_evaluate(_config(max_steps=1, stages="finetune"), str(wd))
    ckpt = wd / "checkpoints" / "1"
    victims = [p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    for p in victims:
        p.write_bytes(b"\0" * 17)
    before = sorted(str(p) for p in ckpt.rglob("*"))
    with pytest.raises(workdir.CheckpointError, match="cannot restore checkpoint step 1"):
        train.train_and_evaluate(_config(max_steps=2, stages="finetune"), str(wd),
                                 continue_changed=True)
    assert sorted(str(p) for p in ckpt.rglob("*")) == before  # nothing overwritten
    assert "2" not in os.listdir(wd / "checkpoints")


def test_nan_loss_stops_with_the_step(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
        train.train_and_evaluate(_config(max_steps=6, stages="finetune", **{"optim.lr": 1e30}),
                                 str(tmp_path))


def test_sigterm_requests_a_checkpointed_stop(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"))
    try:
        assert not ckpt.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert ckpt.should_stop(1)
    finally:
        ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is not ckpt._on_sigterm


def test_ctrl_c_requests_a_checkpointed_stop_and_a_second_stops_at_once(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's, in a background job
    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"))
    try:
        assert not ckpt.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert ckpt.should_stop(1) and ckpt.stop_reason == "interrupted"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        ckpt.close()
    assert signal.getsignal(signal.SIGINT) is before


def test_nan_state_is_never_checkpointed(tmp_path):
    """Checkpoints (every 3 steps) fall between log steps (every 4): losses are checked first."""
    cfg = _config(max_steps=6, stages="finetune", log_every_steps=4, checkpoint_every_steps=3,
                  **{"optim.lr": 1e30})
    with pytest.raises(train.NonFiniteLossError):
        train.train_and_evaluate(cfg, str(tmp_path))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 3  # orbax saves step 1; step 3 followed non-finite losses
    mgr = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
    for step in steps:
        params = mgr.restore(step, args=ocp.args.StandardRestore())["params"]
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    mgr.close()


def test_relative_workdir_and_signal_handlers_given_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    train.train_and_evaluate(_config(max_steps=1), "runs/w")
    # a SIGTERM or Ctrl-C after the run is not eaten
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert checkpointing.latest_step("runs/w/checkpoints") == 1


def test_checkpoint_past_the_configured_end_is_refused(tmp_path):
    train.train_and_evaluate(_config(max_steps=2, stages="finetune"), str(tmp_path))
    with pytest.raises(workdir.CheckpointError, match="step 2, past this run's last step 1"):
        train.train_and_evaluate(_config(max_steps=1, stages="finetune"), str(tmp_path),
                                 continue_changed=True)
    assert checkpointing.latest_step(str(tmp_path / "checkpoints")) == 2


@pytest.mark.slow
def test_quantized_stages_never_run_uncalibrated(tmp_path):
    """A stage list without 'calibrate' still evaluates/fine-tunes the calibrated network."""
    explicit = train.train_and_evaluate(_config(stages="calibrate,eval_quant"),
                                        str(tmp_path / "a"))
    implicit = train.train_and_evaluate(_config(stages="eval_quant"), str(tmp_path / "b"))
    assert implicit["calibrated_lsb"] == explicit["calibrated_lsb"]
    assert implicit["quant_before"] == explicit["quant_before"]
    # A later 'finetune' alone in the same workdir reuses the l's calibrated there.
    later = train.train_and_evaluate(_config(stages="finetune", max_steps=1),
                                     str(tmp_path / "b"), continue_changed=True)
    for a, b in zip(jax.tree.leaves(later["variables"]["quant"]),
                    jax.tree.leaves(explicit["variables"]["quant"]), strict=True):
        assert float(a) == float(b)
    # calib.enabled=False is FAQ's uncalibrated control: the defaults, nothing recorded.
    control = train.train_and_evaluate(_config(stages="eval_quant", **{"calib.enabled": False}),
                                       str(tmp_path / "c"))
    assert "calibrated_lsb" not in control
    assert control["quant_before"] != explicit["quant_before"]


def test_any_eval_batch_size_works_on_8_devices(tmp_path):
    """150 is no multiple of the 8 devices: batches are padded, every digit counted once."""
    assert jax.device_count() == 8
    a = train.train_and_evaluate(_config(stages="eval_fp32", eval_batch_size=150),
                                 str(tmp_path / "a"))["fp32"]
    b = train.train_and_evaluate(_config(stages="eval_fp32", eval_batch_size=152),
                                 str(tmp_path / "b"))["fp32"]
    assert a["count"] == b["count"] == 300
    assert a["top1"] == b["top1"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
def test_lsq_run_end_to_end(tmp_path):
    """quant.method="lsq": the calibrate stage starts the steps (recorded in summary.json),
    fine-tuning learns them, Fig. 2's cosine compares kernels only, the power-of-two network
    exports, and an FAQ config cannot reuse the workdir."""
    from faq_jax.export import cli as export_cli  # noqa: PLC0415

    wd = tmp_path / "lsq"
    c = _config(stages="calibrate,finetune", max_steps=2, **{"quant.method": "lsq",
                                                              "quant.lsq_pow2": True})
    result = train.train_and_evaluate(c, str(wd))
    params = result["variables"]["params"]
    assert "weight_log2_step" in params["conv1"] and "log2_step" in params["act"]
    assert not result["variables"].get("quant")
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["lsq_init_steps"]["act/log2_step"] == pytest.approx(
        float(result["lsq_init_steps"]["act/log2_step"]))
    assert "conv1/weight_log2_step" in summary["lsq_init_steps"]
    assert set(summary["weight_cosine"]["per_layer"]) == {
        p for p in summary["weight_cosine"]["per_layer"] if "step" not in p}
    assert "conv1" in summary["weight_cosine"]["per_layer"]
    export_cli.main(["--workdir", str(wd), "--out", str(tmp_path / "net.npz")])
    with pytest.raises(workdir.CheckpointError, match="another experiment.*method"):
        train.train_and_evaluate(_config(stages="calibrate"), str(wd))


def test_labels_beyond_num_classes_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"num_classes=5, but the train split of "
                       r"scikit-learn's digits has label 9.*--config.num_classes=10"):
        train.train_and_evaluate(_config(num_classes=5), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_an_empty_workdir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--workdir= names no folder"):
        train.train_and_evaluate(_config(), "")
    assert os.listdir(tmp_path) == []


def _hashes(root):
    """sha256 of every file under ``root`` (what a refused run must leave as it is)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_only_prefix() -> list[str]:
    """A command prefix under which chmod a-w holds (root ignores it unless it drops
    CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root without setpriv: a read-only folder cannot be made")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


@pytest.mark.slow
def test_one_workdir_holds_one_experiment(tmp_path, monkeypatch):
    """A bad rule writes nothing; a finished smoke run refuses the real command (changed
    max_steps or paper_rules) leaving every file as it was, refuses a concurrent run,
    re-evaluates read-only, and continues on purpose with the change recorded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    wd = tmp_path / "w"
    with pytest.raises(ValueError, match="layer9_9"):
        train.train_and_evaluate(_config(max_steps=2, **{"quant.rules": (("layer9_9/conv1", 4,
                                                                          None),)}), "~/w")
    assert not wd.exists()  # so the corrected command runs (`~` expanded)
    train.train_and_evaluate(_config(max_steps=2), "~/w")
    before = _hashes(wd)
    for overrides, change in (({"max_steps": 5}, "max_steps 2 -> 5"),
                              ({"quant.paper_rules": False}, "quant.paper_rules True -> False")):
        with pytest.raises(workdir.CheckpointError, match=re.escape(change)):
            train.train_and_evaluate(_config(**{"max_steps": 2, **overrides}), str(wd))
        assert _hashes(wd) == before
    with workdir.run_lock(str(wd)):
        with pytest.raises(workdir.CheckpointError, match="another run is working"):
            train.train_and_evaluate(_config(max_steps=2), str(wd))
    assert _hashes(wd) == before

    # Read-only: the finished run is evaluated again (a free field changed), nothing written.
    ro = tmp_path / "ro"
    shutil.copytree(wd, ro)
    subprocess.run(["chmod", "-R", "a-w", str(ro)], check=True)
    args = ["--config.stages=calibrate,finetune", "--config.batch_size=32",
            "--config.eval_batch_size=152", "--config.num_epochs=1", "--config.max_steps=2",
            "--config.log_every_steps=5", "--config.checkpoint_every_steps=1000"]
    out = subprocess.run([*_read_only_prefix(), sys.executable, "-m", "faq_jax.main",
                          f"--workdir={ro}", *args], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{json.loads((ro / 'summary.json').read_text())['quant_after']['top1']:7.2f}" \
        in out.stdout
    assert _hashes(ro) == before
    subprocess.run(["chmod", "-R", "u+w", str(ro)], check=True)

    result = train.train_and_evaluate(_config(max_steps=3, log_every_steps=1), str(wd),
                                      continue_changed=True)
    history = json.loads((wd / workdir.HISTORY).read_text())
    assert [e["event"] for e in history] == ["created", "continued"]
    assert history[-1]["changes"] == {"max_steps": [2, 3]}  # log_every_steps is free
    assert checkpointing.latest_step(str(wd / "checkpoints")) == 3
    assert result["quant_after"]["count"] == 300
