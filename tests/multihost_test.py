"""A real 2-process jax.distributed run on 127.0.0.1 (CPU, gloo collectives)."""

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from faq_jax import workdir

HELPERS = Path(__file__).parent / "helpers"
WORKER = HELPERS / "multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(worker: Path, workdir: Path, timeout: int) -> list[str]:
    """Runs ``worker PORT PROCESS_ID WORKDIR`` as processes 0 and 1; their outputs."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(worker), str(port), str(i), str(workdir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    return outs


def test_a_held_workdir_stops_every_process_before_anything_is_written(tmp_path):
    """Process 0 is refused the lock (another run holds it): both processes stop with the
    reason, neither hangs in a collective, and the workdir gets nothing."""
    wd = tmp_path / "work"
    with workdir.run_lock(str(wd)):
        before = sorted(p.name for p in wd.iterdir())
        outs = _two_processes(HELPERS / "lock_worker.py", wd, timeout=300)
        assert sorted(p.name for p in wd.iterdir()) == before
    assert "REFUSED another run is working in" in outs[0], outs[0][-3000:]
    assert "REFUSED process 0 could not lock workdir" in outs[1], outs[1][-3000:]


@pytest.mark.slow
def test_two_processes_train_and_agree(tmp_path):
    outs = _two_processes(WORKER, tmp_path / "work", timeout=600)
    results = [re.search(r"RESULT (.*)", o).group(1) for o in outs]
    fields = [dict(kv.split("=") for kv in r.split()) for r in results]
    assert {f["process"] for f in fields} == {"0", "1"}
    assert all(f["count"] == "2" and f["devices"] == "4" for f in fields)
    # Both processes hold the same parameters and the same exact evaluation (300 digits).
    assert fields[0]["params"] == fields[1]["params"]
    assert fields[0]["top1"] == fields[1]["top1"]
    assert float(fields[0]["eval_count"]) == 300
    # Each digit's hit, gathered from both processes in split order, on both.
    assert fields[0]["hits"] == fields[1]["hits"] and fields[0]["pairs"] == "300"
    assert int(fields[0]["hit_count"]) == round(3 * float(fields[0]["top1"]))
    assert (tmp_path / "work" / "checkpoints" / "4").exists()
