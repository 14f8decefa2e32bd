"""Where a run's metrics go: TensorBoard event files (clu) when TensorFlow is installed, else
``metrics.jsonl`` in the workdir, one JSON object per write, so a training run needs no
TensorFlow (e.g. a GPU machine without it, with ``config.data.loader="numpy"``).

:func:`create` gives an object with clu's ``MetricWriter`` methods that faq_jax uses
(``write_scalars``, ``write_hparams``, ``flush``, ``close``); :func:`progress_reporter` the
per-step hook (clu's ``ReportProgress``: steps/s and ETA in the logs); :func:`read_scalars`
reads either form back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging

JSONL = "metrics.jsonl"


def tensorflow_installed() -> bool:
    """Whether TensorFlow (hence clu's TensorBoard writer) can be imported."""
    return importlib.util.find_spec("tensorflow") is not None


class JsonlWriter:
    """Scalars and hparams appended to ``WORKDIR/metrics.jsonl`` (nothing written with
    ``just_logging``): ``{"step": s, "scalars": {tag: value}}`` per write."""

    def __init__(self, workdir: str, just_logging: bool = False):
        self.path = None if just_logging else os.path.join(workdir, JSONL)

    def _add(self, record: dict[str, Any]) -> None:
        if self.path is not None:  # appended at once: a killed run keeps what it logged
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        self._add({"step": int(step), "scalars": values})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._add({"hparams": dict(hparams)})

    def flush(self) -> None:
        pass  # every write is on disk already

    def close(self) -> None:
        pass


def create(workdir: str, *, just_logging: bool) -> Any:
    """clu's default writer (TensorBoard events + logs) with TensorFlow, else a
    :class:`JsonlWriter`. ``just_logging``: write no files (other processes, read-only
    workdirs)."""
    if tensorflow_installed():
        from faq_jax import lazy_imports  # noqa: PLC0415 - clu's writer loads TensorFlow

        lazy_imports.tensorflow()
        from clu import metric_writers  # noqa: PLC0415

        return metric_writers.create_default_writer(workdir, just_logging=just_logging)
    return JsonlWriter(workdir, just_logging)


def progress_reporter(total_steps: int, writer: Any) -> Callable[[int], Any]:
    """clu's ``ReportProgress`` (steps/s, ETA) with TensorFlow; without it the console's
    progress bar says the same, so a no-op."""
    if not tensorflow_installed():
        return lambda step: None
    from faq_jax import lazy_imports  # noqa: PLC0415

    lazy_imports.tensorflow()
    from clu import periodic_actions  # noqa: PLC0415

    return periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)


def read_scalars(workdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a run wrote, from its TensorBoard events and its ``metrics.jsonl``:
    tag -> [(step, value)], by step."""
    out: dict[str, list[tuple[int, float]]] = {}
    events = sorted(pathlib.Path(workdir).glob("events.out.tfevents.*"))
    if events:
        _read_events(events, out)
    jsonl = pathlib.Path(workdir) / JSONL
    if jsonl.exists():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            for tag, value in record.get("scalars", {}).items():
                out.setdefault(tag, []).append((int(record["step"]), float(value)))
    return {k: sorted(v) for k, v in out.items()}


def _read_events(paths: list[pathlib.Path], out: dict[str, list[tuple[int, float]]]) -> None:
    from faq_jax import lazy_imports  # noqa: PLC0415 - TensorFlow only when reading events

    tf = lazy_imports.tensorflow()
    for path in paths:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.HasField("tensor") and v.tensor.dtype in (1, 2):  # float / double
                    arr = tf.make_ndarray(v.tensor)
                    if arr.size != 1:
                        continue
                    value = float(arr.reshape(()))
                elif v.HasField("simple_value"):
                    value = float(v.simple_value)
                else:
                    continue
                out.setdefault(v.tag, []).append((int(event.step), value))
