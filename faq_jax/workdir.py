"""The files of a training workdir: their names, how they are written, how they are read.

A workdir holds one experiment::

    WORKDIR/experiment.json   what defines the experiment (arch, classes, precision,
                              dataset); a run with another definition refuses the workdir
    WORKDIR/config.json       the experiment's full config; later runs must match it but for
                              FREE_FIELDS (or continue on purpose, see admit)
    WORKDIR/config_history.json  when the config was recorded, and each deliberate change
    WORKDIR/run.lock          held (flock) by the run working in the workdir
    WORKDIR/summary.json      results so far: evaluations, calibrated l's, analysis
    WORKDIR/fp32/             orbax checkpoints of the fp32 training stage (``pretrain``)
    WORKDIR/checkpoints/      orbax checkpoints of FAQ fine-tuning
    WORKDIR/events.out.*      TensorBoard events

JSON files are written whole or not at all (a temporary file, then ``os.replace``), by
process 0 only. Every other module takes these names from here. A run first checks,
reading only (:func:`admit`), then takes the lock (:func:`run_lock`), then records
(:func:`record`): a refused run writes nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.util
import json
import os
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from faq_jax.config import defaults

EXPERIMENT = "experiment.json"
CONFIG = "config.json"
SUMMARY = "summary.json"
HISTORY = "config_history.json"
LOCK = "run.lock"
PRETRAIN_CHECKPOINTS = "fp32"
FINETUNE_CHECKPOINTS = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint (training or converted), or a workdir, that cannot be used; the message
    says what to do."""


def absolute(path: str) -> str:
    """``path`` made absolute when it is local (orbax refuses relative paths), ``~`` expanded
    (shells leave ``--workdir=~/x`` as it is); URLs as given. ValueError when empty (the
    run would land in the current directory)."""
    if path is None or not str(path).strip():
        raise ValueError(f"--workdir={path or ''!s} names no folder: give the folder for this "
                         "run's checkpoints and results, e.g. --workdir=runs/demo")
    return path if "://" in str(path) else os.path.abspath(os.path.expanduser(path))


def pretrain_dir(workdir: str) -> str:
    """Checkpoints of the fp32 training stage."""
    return os.path.join(workdir, PRETRAIN_CHECKPOINTS)


def finetune_dir(workdir: str) -> str:
    """Checkpoints of FAQ fine-tuning (what ``python -m faq_jax.export`` reads)."""
    return os.path.join(workdir, FINETUNE_CHECKPOINTS)


def write_json(path: epath.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON at ``path`` atomically (temporary file, then replace); process
    0 only."""
    if jax.process_index() != 0:
        return
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_summary(workdir: str) -> dict[str, Any]:
    """``summary.json`` ({} before the first result); CheckpointError naming it if corrupt."""
    path = epath.Path(workdir) / SUMMARY
    return _read_json(path, "the results and calibrated l's") if path.exists() else {}


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
    """Writes ``summary.json``. A read-only workdir (a finished run evaluated again) is left
    as it is, with a warning if the results differ from those it holds."""
    if not writable(workdir):
        if json.loads(json.dumps(summary)) != read_summary(workdir):
            logging.warning("workdir %s is read-only: these results are not in its %s",
                            workdir, SUMMARY)
        return
    write_json(epath.Path(workdir) / SUMMARY, summary)


# Fields that cannot change what a run computes (its checkpoints, the results in
# summary.json, the exported network), so they stay free between the runs of one workdir:
# how often it logs, checkpoints (resume is exact) and evaluates along the way (TensorBoard
# only), how many checkpoints it keeps, the evaluation batch size (evaluation is exact:
# padded and masked), where archives are extracted (a cache of the same data) and
# data.num_train (informational, never read). Every other field, paths to data included (a
# different path may hold different data), must match the config the workdir recorded. An
# entry names a field or a whole sub-config ("data" would free every data field).
FREE_FIELDS = (
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_epochs",
    "eval_batch_size",
    "data.cache_dir",
    "data.num_train",
)
ABSENT = "<absent>"  # a field one of two configs does not have
# Fields added to the config after workdirs were recorded without them, with the value that
# computes what those runs computed: a recorded config lacking one holds that value.
ADDED_FIELDS = {"data.loader": "tf"}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted path: value} of a JSON config (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted path: (old, new)} of the fields where two JSON configs differ, the
    :data:`FREE_FIELDS` left out; :data:`ABSENT` stands for a field a config lacks."""
    a, b = {**ADDED_FIELDS, **_flat(old)}, {**ADDED_FIELDS, **_flat(new)}
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, ABSENT) != b.get(k, ABSENT)
            and not any(k == f or k.startswith(f + ".") for f in FREE_FIELDS)}


def _describe(changes: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    items = [f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


class Admission(NamedTuple):
    """What :func:`admit` found a run may do in a workdir; :func:`record` writes it."""

    workdir: str
    experiment: dict[str, Any] | None  # experiment.json to write (a new workdir)
    config: str | None  # config.json to write; None: the recorded one stands
    event: dict[str, Any] | None  # appended to config_history.json
    warning: str | None  # logged when recorded


def _read_json(path: epath.Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e}); it records {what} of the experiment "
                              "in this workdir. Restore it, or use a new --workdir.") from e


def admit(workdir: str, config: ml_collections.ConfigDict, experiment: dict[str, Any], *,
          continue_changed: bool = False) -> Admission:
    """Checks that ``config`` may run in ``workdir``, reading only; CheckpointError if not.

    A new workdir records ``experiment`` (its identity) and the full config. In a workdir
    that has them and holds results, a run must match the identity, always, and the
    recorded config on every field but :data:`FREE_FIELDS`, unless ``continue_changed``
    (then the new config is recorded and the change appended to config_history.json). A
    workdir without results (its run failed first) takes the new config. A workdir written before
    configs were recorded (experiment.json, no config_history.json) is accepted with a
    warning and gets this run's config recorded. Fields one config lacks (written by another
    faq_jax version) are recorded with a warning, not refused.
    """
    wd = epath.Path(workdir)
    new_json = config.to_json_best_effort(indent=2)
    new = json.loads(new_json)
    if not (wd / EXPERIMENT).exists():
        if (wd / HISTORY).exists():
            raise CheckpointError(f"{wd / EXPERIMENT} is missing; it identifies the experiment "
                                  "in this workdir. Restore it, or use a new --workdir.")
        return Admission(workdir, experiment, new_json, _event("created", {}), None)
    old_id = _read_json(wd / EXPERIMENT, "the identity")
    # Both ways: a key only one side records (an LSQ run's method) differs too.
    keys = [*experiment, *(k for k in old_id if k not in experiment)]
    diff = {k: (old_id.get(k), experiment.get(k)) for k in keys
            if old_id.get(k) != experiment.get(k)}
    if not _holds_results(wd):  # a run that failed before computing anything: start afresh
        old = _read_json(wd / CONFIG, "the config") if (wd / CONFIG).exists() else {}
        changes = config_changes(old, new) if old else diff
        if not changes and (wd / HISTORY).exists():
            return Admission(workdir, None, None, None, None)
        return Admission(workdir, experiment, new_json,
                         _event("replaced" if changes else "recorded", changes),
                         f"workdir {workdir} holds no results yet: its config is replaced "
                         f"({_describe(changes)})" if changes else None)
    if diff:
        raise CheckpointError(
            f"workdir {workdir} holds another experiment ({_describe(diff)}; "
            f"{EXPERIMENT}). Nothing was written. Use a new --workdir: its checkpoints "
            "belong to that experiment.")
    if not (wd / HISTORY).exists():  # written before faq_jax recorded configs
        try:  # the config of its latest run, if any: only to say what differs
            old = _read_json(wd / CONFIG, "the config") if (wd / CONFIG).exists() else {}
        except CheckpointError:
            old = {}
        changes = config_changes(old, new) if old else {}
        since = f"; it differs from the {CONFIG} of an earlier run in: {_describe(changes)}" \
            if changes else ""
        return Admission(workdir, None, new_json, _event("adopted", changes),
                         f"workdir {workdir} was written before faq_jax recorded the config of "
                         f"each experiment: recording this run's ({CONFIG}, {HISTORY}); "
                         f"later runs must match it{since}")
    if not (wd / CONFIG).exists():
        raise CheckpointError(f"{wd / CONFIG} is missing; it records the config of the "
                              "experiment in this workdir. Restore it, or use a new --workdir.")
    changes = config_changes(_read_json(wd / CONFIG, "the config"), new)
    if not changes:
        return Admission(workdir, None, None, None, None)
    changed = {k: v for k, v in changes.items() if ABSENT not in v}
    if changed and not continue_changed:
        raise CheckpointError(
            f"workdir {workdir} holds a run of another config: {_describe(changed)}. Nothing "
            "was written. Use a new --workdir, or continue this one with these changes on "
            "purpose: --continue_changed (train_and_evaluate(..., continue_changed=True)) "
            f"records them in {HISTORY}.")
    event = "continued" if changed else "upgraded"
    return Admission(workdir, None, new_json, _event(event, changes),
                     f"workdir {workdir}: {event} with a changed config ({_describe(changes)}); "
                     f"recorded in {HISTORY}")


def _holds_results(wd: epath.Path) -> bool:
    """Whether a run computed anything in ``wd``: summary.json or a checkpoint folder with
    something in it (a run can fail after recording its config, before any result)."""
    return (wd / SUMMARY).exists() or any(
        d.exists() and any(d.iterdir()) for d in (wd / PRETRAIN_CHECKPOINTS,
                                                   wd / FINETUNE_CHECKPOINTS))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _event(kind: str, changes: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    return {"event": kind, "time": _now(), "changes": {k: list(v) for k, v in changes.items()}}


def record(admission: Admission) -> None:
    """Writes what :func:`admit` decided: config.json and experiment.json, and the history
    entry after them (its presence marks a workdir whose config is recorded)."""
    a = admission
    if a.warning:
        logging.warning("%s", a.warning)
    if a.config is None:
        return
    if not writable(a.workdir):
        logging.warning("workdir %s is read-only: its config is not recorded", a.workdir)
        return
    wd = epath.Path(a.workdir)
    write_json(wd / CONFIG, a.config)
    if a.experiment is not None:
        write_json(wd / EXPERIMENT, a.experiment)
    history = _read_json(wd / HISTORY, "the config history") if (wd / HISTORY).exists() else []
    write_json(wd / HISTORY, [*history, a.event])


def writable(workdir: str) -> bool:
    """Whether this process may write in ``workdir`` (or create it); URLs count as
    writable."""
    if "://" in str(workdir):
        return True
    path = os.path.abspath(workdir)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


@contextlib.contextmanager
def run_lock(workdir: str) -> Iterator[None]:
    """Holds ``WORKDIR/run.lock`` while a run works in ``workdir``; CheckpointError if
    another run holds it.

    An OS lock (``flock``) on the file, so the kernel frees it when its holder dies, even
    by kill -9: the next run finds the file of a dead holder, says so and takes it over.
    Multi-host: process 0 takes it and tells the others whether it got it, so all stop
    together. Skipped (with a warning) on object stores (``gs://``: no such lock there;
    never start two runs on one such workdir) and filesystems without ``flock``, and on a
    read-only workdir (nothing can be written there).
    """
    lock, error = None, None
    if "://" in str(workdir):
        if jax.process_index() == 0:
            logging.warning("workdir %s is on an object store: no run lock; never start two "
                            "runs on it at once", workdir)
    elif not writable(workdir):
        logging.info("workdir %s is read-only: no run lock needed", workdir)
    elif jax.process_index() == 0:
        try:
            lock = _acquire(os.path.join(workdir, LOCK))
        except CheckpointError as e:
            error = e
        except OSError as e:  # a filesystem without flock (some network mounts)
            logging.warning("cannot lock %s (%s): no run lock; never start two runs on it at "
                            "once", workdir, e)
    if jax.process_count() > 1:  # one answer for every process
        from jax.experimental import multihost_utils  # noqa: PLC0415

        if not multihost_utils.broadcast_one_to_all(np.int32(error is None)):
            error = error or CheckpointError(f"process 0 could not lock workdir {workdir} "
                                             "(see its log)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            _release(lock, os.path.join(workdir, LOCK))


def _acquire(path: str) -> int:
    """The descriptor of ``path``, created and flock'ed, holding this run's pid and host."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise CheckpointError(
                f"another run is working in {os.path.dirname(path)} ({holder}; {path}). "
                "Nothing was written. Wait for it to finish or stop it, or use another "
                "--workdir.") from None
        except OSError:
            os.close(fd)
            raise
        try:  # a run that releases the lock unlinks the file: lock the file at path
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    if os.fstat(fd).st_size:
        logging.warning("%s: the run that held it (%s) ended without releasing it (killed?); "
                        "taking it over", path, _holder(fd))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": _now()}).encode(), 0)
    os.fsync(fd)
    return fd


def _holder(fd: int) -> str:
    """'pid P on HOST since TIME' of the lock file open at ``fd``."""
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _release(fd: int, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # before unlocking: the next run that
        os.unlink(path)  # opens path creates and locks a fresh file
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_config(workdir: str, config_path: str | None = None) -> ml_collections.ConfigDict:
    """The config of the run in ``workdir``: the file ``config_path`` if given, else
    ``config.json``, else (workdirs older than config.json) the defaults of the experiment
    ``experiment.json`` records."""
    if config_path:
        spec = importlib.util.spec_from_file_location("workdir_config", config_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    full = epath.Path(workdir) / CONFIG
    if full.exists():
        return ml_collections.ConfigDict(json.loads(full.read_text()))
    exp = json.loads((epath.Path(workdir) / EXPERIMENT).read_text())
    c = defaults.get_base(exp["arch"], exp["w_bits"] or 8, exp["a_bits"] or 8,
                          dataset=exp.get("dataset", "imagenet2012"))
    c.num_classes = exp["num_classes"]
    c.quant.enabled = bool(exp.get("quant", True))
    c.quant.rules = tuple(tuple(r) for r in exp.get("rules", []))
    return c
