"""The workdir's files: names, atomic JSON writes, the experiment guard, the run lock."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from faq_jax import workdir
from faq_jax.config import check, demo

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def test_file_names_are_the_v1_layout(tmp_path):
    wd = str(tmp_path)
    assert (workdir.EXPERIMENT, workdir.CONFIG, workdir.SUMMARY) == (
        "experiment.json", "config.json", "summary.json")
    assert workdir.finetune_dir(wd) == f"{wd}/checkpoints"
    assert workdir.pretrain_dir(wd) == f"{wd}/fp32"


def test_summary_round_trip_leaves_no_temporary_file(tmp_path):
    assert workdir.read_summary(str(tmp_path)) == {}
    workdir.write_summary(str(tmp_path), {"b": 1, "a": {"top1": 2.5}})
    assert workdir.read_summary(str(tmp_path)) == {"a": {"top1": 2.5}, "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def _hashes(root: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what a refused run must leave as it is)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(wd, config=None, *, results=True, **kwargs) -> None:
    """What train_and_evaluate does with the workdir before its stages, and (``results``) a
    first result."""
    config = config or demo.get_config()
    workdir.record(workdir.admit(str(wd), config, check.experiment_id(config), **kwargs))
    if results and not (wd / workdir.SUMMARY).exists():
        workdir.write_summary(str(wd), {"fp32": {"top1": 50.0}})


def _json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _history(wd) -> list[dict]:
    return json.loads((wd / workdir.HISTORY).read_text())


def test_a_new_workdir_records_its_experiment_and_full_config(tmp_path):
    wd = tmp_path / "new"
    c = demo.get_config()
    _run(wd, c)
    assert json.loads((wd / "experiment.json").read_text()) == check.experiment_id(c)
    assert _json(workdir.read_config(str(wd))) == _json(c)
    assert [e["event"] for e in _history(wd)] == ["created"]
    before = _hashes(wd)
    _run(wd, demo.get_config())  # the same config again: nothing to write
    assert _hashes(wd) == before


def test_a_changed_config_is_refused_naming_the_fields(tmp_path):
    wd = tmp_path / "w"
    _run(wd)
    before = _hashes(wd)
    c = demo.get_config()
    c.max_steps, c.quant.paper_rules, c.optim.lr = 5, False, 0.5
    with pytest.raises(workdir.CheckpointError) as e:
        _run(wd, c)
    msg = str(e.value)
    for part in ("max_steps -1 -> 5", "quant.paper_rules True -> False", "optim.lr 0.01 -> 0.5",
                 "Nothing was written", "new --workdir", "--continue_changed"):
        assert part in msg, msg
    assert _hashes(wd) == before


def test_free_fields_stay_free(tmp_path):
    wd = tmp_path / "w"
    _run(wd)
    before = _hashes(wd)
    c = demo.get_config()
    c.log_every_steps, c.eval_batch_size, c.checkpoint_every_steps = 1, 7, 3
    c.keep_checkpoints, c.eval_every_epochs, c.data.cache_dir = 9, 0, "/elsewhere"
    _run(wd, c)
    assert _hashes(wd) == before
    assert workdir.config_changes(demo.get_config().to_dict(), c.to_dict()) == {}


def test_continue_changed_records_the_change(tmp_path):
    wd = tmp_path / "w"
    _run(wd)
    c = demo.get_config()
    c.max_steps = 5
    _run(wd, c, continue_changed=True)
    assert workdir.read_config(str(wd)).max_steps == 5
    assert _history(wd)[-1]["event"] == "continued"
    assert _history(wd)[-1]["changes"] == {"max_steps": [-1, 5]}
    _run(wd, c)  # the changed config is now the experiment's
    with pytest.raises(workdir.CheckpointError, match="max_steps 5 -> -1"):
        _run(wd)


def test_a_workdir_without_results_takes_the_corrected_config(tmp_path):
    """A run that recorded its config and failed before any result (wrong init_checkpoint,
    say) leaves nothing the corrected command could mix with."""
    wd = tmp_path / "w"
    _run(wd, results=False)
    c = demo.get_config()
    c.max_steps, c.quant.w_bits = 5, 8
    _run(wd, c)
    assert json.loads((wd / "experiment.json").read_text())["w_bits"] == 8
    assert _history(wd)[-1]["event"] == "replaced"
    assert _history(wd)[-1]["changes"]["max_steps"] == [-1, 5]
    bits = demo.get_config().quant.w_bits
    with pytest.raises(workdir.CheckpointError, match=f"another experiment .*w_bits 8 -> {bits}"):
        _run(wd)  # now it holds a result


def test_another_experiment_is_refused_even_on_purpose(tmp_path):
    wd = tmp_path / "w"
    _run(wd)
    c = demo.get_config()
    c.quant.w_bits = 8
    with pytest.raises(workdir.CheckpointError, match="another experiment.*w_bits"):
        _run(wd, c, continue_changed=True)
    (wd / "experiment.json").write_text("{")
    with pytest.raises(workdir.CheckpointError, match="corrupt"):
        _run(wd)


def test_fields_another_version_lacks_are_recorded_not_refused(tmp_path):
    wd = tmp_path / "w"
    _run(wd)
    old = json.loads((wd / "config.json").read_text())
    del old["compute_dtype"]
    (wd / "config.json").write_text(json.dumps(old))
    _run(wd)
    assert _history(wd)[-1]["event"] == "upgraded"
    assert _history(wd)[-1]["changes"] == {"compute_dtype": [workdir.ABSENT, "float32"]}


def test_a_workdir_from_before_recorded_configs_is_adopted_once(tmp_path, caplog):
    wd = tmp_path / "w"
    shutil.copytree(FIXTURES / "workdir_v1", wd)  # experiment.json, config.json, no history
    config = workdir.read_config(str(wd))
    old_config = (wd / "config.json").read_text()
    _run(wd, config)
    assert "written before faq_jax recorded the config" in caplog.text
    assert [e["event"] for e in _history(wd)] == ["adopted"]
    assert _json(workdir.read_config(str(wd))) == _json(config)
    assert json.loads(old_config) == json.loads((wd / "config.json").read_text())
    caplog.clear()
    _run(wd, config)  # from now on a workdir like any other
    assert "written before" not in caplog.text
    config.seed = 1
    with pytest.raises(workdir.CheckpointError, match="seed 0 -> 1"):
        _run(wd, config)


def test_read_config_prefers_config_json_then_the_experiment(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps(
        {"arch": "resnet20", "num_classes": 10, "dataset": "digits", "quant": True,
         "w_bits": 4, "a_bits": 4, "rules": []}))
    older = workdir.read_config(str(tmp_path))  # a workdir from before config.json
    assert (older.arch, older.num_classes, older.quant.w_bits) == ("resnet20", 10, 4)
    c = demo.get_config()
    c.num_epochs = 3
    _run(tmp_path, c)  # adopted
    assert workdir.read_config(str(tmp_path)).num_epochs == 3


def test_experiment_guard_compares_keys_either_side_records(tmp_path):
    """An LSQ run records its method; an FAQ config (which records none) is still refused."""
    import ml_collections  # noqa: PLC0415

    wd = str(tmp_path)
    (tmp_path / workdir.EXPERIMENT).write_text(json.dumps({"arch": "resnet20",
                                                           "method": "lsq"}))
    (tmp_path / workdir.SUMMARY).write_text("{}")  # it holds results
    with pytest.raises(workdir.CheckpointError, match="method 'lsq' -> None"):
        workdir.admit(wd, ml_collections.ConfigDict({"arch": "resnet20"}), {"arch": "resnet20"})


def test_workdir_paths_empty_refused_tilde_expanded(monkeypatch, tmp_path):
    for empty in ("", " ", None):
        with pytest.raises(ValueError, match="names no folder"):
            workdir.absolute(empty)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert workdir.absolute("~/runs/x") == str(tmp_path / "runs" / "x")
    assert workdir.absolute("gs://bucket/x") == "gs://bucket/x"


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    wd = str(tmp_path / "w")
    with workdir.run_lock(wd):
        assert json.loads((tmp_path / "w" / "run.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(workdir.CheckpointError, match=rf"another run .*pid {os.getpid()}"):
            with workdir.run_lock(wd):
                pass
    assert not (tmp_path / "w" / "run.lock").exists()
    with workdir.run_lock(wd):  # free again
        pass


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    wd = str(tmp_path / "w")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from faq_jax import workdir
            with workdir.run_lock({wd!r}):
                print("locked", flush=True)
                time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir.CheckpointError, match=f"pid {holder.pid} "):
            with workdir.run_lock(wd):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "w" / "run.lock").exists()  # kill -9: the file stays, the lock does not
    with workdir.run_lock(wd):
        assert f"pid {holder.pid} " in caplog.text and "taking it over" in caplog.text


def test_object_store_workdirs_run_without_a_lock(caplog):
    with workdir.run_lock("gs://bucket/never/touched"):
        pass
    assert "object store: no run lock" in caplog.text
