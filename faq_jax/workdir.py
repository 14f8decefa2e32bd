"""The files of a training workdir: their names, how they are written, how they are read.

A workdir holds one experiment::

    WORKDIR/experiment.json   what defines the experiment (arch, classes, precision,
                              dataset); a run with another definition refuses the workdir
    WORKDIR/config.json       the full config of the latest run (export, audit)
    WORKDIR/summary.json      results so far: evaluations, calibrated l's, analysis
    WORKDIR/fp32/             orbax checkpoints of the fp32 training stage (``pretrain``)
    WORKDIR/checkpoints/      orbax checkpoints of FAQ fine-tuning
    WORKDIR/events.out.*      TensorBoard events

JSON files are written whole or not at all (a temporary file, then ``os.replace``), by
process 0 only. Every other module takes these names from here.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from faq_jax.config import defaults

EXPERIMENT = "experiment.json"
CONFIG = "config.json"
SUMMARY = "summary.json"
PRETRAIN_CHECKPOINTS = "fp32"
FINETUNE_CHECKPOINTS = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint (training or converted), or a workdir, that cannot be used; the message
    says what to do."""


def absolute(path: str) -> str:
    """``path`` made absolute when it is local (orbax refuses relative paths); URLs as given."""
    return path if "://" in str(path) else os.path.abspath(path)


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
    """``summary.json`` ({} before the first result)."""
    path = epath.Path(workdir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
    write_json(epath.Path(workdir) / SUMMARY, summary)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Records the full config of this run (``config.json``)."""
    write_json(epath.Path(workdir) / CONFIG, config.to_json_best_effort(indent=2))


def check_experiment(workdir: str, experiment: dict[str, Any]) -> None:
    """Creates the workdir and records ``experiment`` in it, or checks it matches what is
    there."""
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    path = epath.Path(workdir) / EXPERIMENT
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is corrupt ({e}); it identifies the experiment "
                                  "whose checkpoints live in this workdir. Restore it or "
                                  "use a new --workdir.") from e
        # Both ways: a key only one side records (an LSQ run's method) differs too.
        keys = [*experiment, *(k for k in old if k not in experiment)]
        diff = {k: (old.get(k), experiment.get(k)) for k in keys
                if old.get(k) != experiment.get(k)}
        if diff:
            details = "; ".join(f"{k}: workdir has {a!r}, config has {b!r}"
                                for k, (a, b) in diff.items())
            raise CheckpointError(f"workdir {workdir} holds another experiment ({details}). "
                                  "Use a new --workdir, or delete this one deliberately.")
        return
    write_json(path, experiment)


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
