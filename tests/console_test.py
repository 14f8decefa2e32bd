"""The console: bad input ends every entry point with one line and no traceback; progress
is plain lines when the output is not a terminal. (The default run's quiet console is
checked in demo_test.py.)"""

import io
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from faq_jax import console

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: pathlib.Path | None = None, devices: int | None = None,
         ) -> subprocess.CompletedProcess:
    """``python -m ARGS`` (stdout and stderr are pipes, not terminals) on the test
    session's 8 fake devices, or on ``devices``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=900)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The single ``error:`` line of a failed run, which names every needle."""
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_progress_writes_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = console.progress(40, "pretrain", stream=stream)
    for _ in range(40):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 1, lines  # a stage shorter than LOG_INTERVAL_S: its end
    assert lines[-1].startswith("pretrain: 100% 40/40 [") and "step/s" in lines[-1], lines
    quiet = io.StringIO()
    sub = console.progress(5, "eval", stream=quiet, transient=True)
    sub.update(5)
    sub.close()
    assert quiet.getvalue() == ""  # an evaluation inside training: no lines of its own


def test_one_line_keeps_the_hint_and_names_the_file():
    assert console.one_line(KeyError("'w_bit'\nDid you mean \"w_bits\"?")) == \
        "'w_bit' Did you mean \"w_bits\"?"
    e = PermissionError(13, "Permission denied", "/x/experiment.json")
    assert console.one_line(e).startswith("Permission denied: /x/experiment.json (check")


def test_misspelled_override_is_one_line_with_the_hint(tmp_path):
    r = _cli("faq_jax.main", f"--workdir={tmp_path / 'w'}", "--config.quant.w_bit=4")
    _one_line_error(r, "w_bit", 'Did you mean "w_bits"')
    assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line(tmp_path):
    r = _cli("faq_jax.main", f"--workdir={tmp_path / 'w'}", "--config=configs/nope.py")
    _one_line_error(r, "configs/nope.py", "No such file")


def test_unwritable_workdir_is_one_line(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a workdir under a file cannot be made
        (tmp_path / "file").write_text("")
        workdir = tmp_path / "file" / "w"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        workdir = tmp_path / "ro" / "w"
    r = _cli("faq_jax.main", f"--workdir={workdir}")
    _one_line_error(r, str(tmp_path))


def test_batch_larger_than_the_dataset_fails_before_pretraining(tmp_path):
    r = _cli("faq_jax.main", f"--workdir={tmp_path / 'w'}", "--config.batch_size=2048")
    _one_line_error(r, "config.batch_size=2048", "1497 training examples")
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_corrupt_cifar_archive_names_the_file(tmp_path):
    import tarfile

    import numpy as np

    archive = tmp_path / "cifar10-jpeg.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(4):
            payload = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(f"train/airplane/{i:04d}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2:len(data) // 2 + 32] = bytes(32)  # damage inside a member
    archive.write_bytes(bytes(data))
    r = _cli("faq_jax.main", f"--workdir={tmp_path / 'w'}",
             "--config=configs/cifar10_r20_w4a4.py", "--config.init=random",
             f"--config.data.archive={archive}",
             f"--config.data.cache_dir={tmp_path / 'cache'}")
    _one_line_error(r, str(archive), "corrupt")


def test_ctrl_c_outside_training_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(console, "verbose", lambda: False)  # the default console
    with pytest.raises(SystemExit) as e, console.exit_on_error():
        raise KeyboardInterrupt
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_export_errors_are_one_line(tmp_path):
    r = _cli("faq_jax.export", "--workdir", str(tmp_path / "nope"), "--out", "x.npz",
             cwd=tmp_path)
    _one_line_error(r, str(tmp_path / "nope"), "no such folder")


def test_convert_errors_are_one_line(tmp_path):
    pytest.importorskip("torch")
    r = _cli("weights_convert", "--arch", "resnet18", "--state-dict",
             str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out"))
    _one_line_error(r, "nope.pth", "does not exist")


def _damage(checkpoint: pathlib.Path) -> None:
    for p in checkpoint.rglob("*"):
        if p.is_file() and p.stat().st_size > 1000:
            p.write_bytes(b"\0" * 17)


def test_corrupt_checkpoint_names_the_step_in_train_and_export(tmp_path, tiny_run):
    workdir = tmp_path / "w"
    shutil.copytree(tiny_run[0], workdir)
    _damage(workdir / "checkpoints" / "16")
    r = _cli("faq_jax.main", f"--workdir={workdir}", "--config.max_steps=16",
             "--config.checkpoint_every_steps=8", "--config.keep_checkpoints=3",
             "--config.eval_every_epochs=100", "--config.eval_batch_size=152")
    line = _one_line_error(r, "cannot restore checkpoint step 16",
                           str(workdir / "checkpoints"), "Move")
    assert len(line) < 600 and "Event loop is closed" not in r.stderr
    assert len((r.stdout + r.stderr).splitlines()) < 10, r.stdout + r.stderr
    r = _cli("faq_jax.export", "--workdir", str(workdir), "--out", str(tmp_path / "x.npz"))
    _one_line_error(r, "cannot restore checkpoint step 16")
    assert not (tmp_path / "x.npz").exists()


def test_truncated_summary_names_the_file(tmp_path, tiny_run):
    workdir = tmp_path / "w"
    shutil.copytree(tiny_run[0], workdir)
    summary = workdir / "summary.json"
    summary.write_text(summary.read_text()[:100])
    r = _cli("faq_jax.main", f"--workdir={workdir}", "--config.max_steps=16",
             "--config.checkpoint_every_steps=8", "--config.keep_checkpoints=3",
             "--config.eval_every_epochs=100", "--config.eval_batch_size=152")
    _one_line_error(r, str(summary), "corrupt")
    r = _cli("faq_jax.export", "--workdir", str(workdir), "--out", str(tmp_path / "x.npz"))
    _one_line_error(r, str(summary), "corrupt")


def test_divergence_is_one_line(tmp_path):
    r = _cli("faq_jax.main", f"--workdir={tmp_path / 'w'}", "--config.stages=pretrain",
             "--config.pretrain.optim.lr=1e30", "--config.max_steps=3",
             "--config.checkpoint_every_steps=2", devices=1)
    _one_line_error(r, "training diverged", "lr")
