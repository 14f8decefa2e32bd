"""A real 2-process jax.distributed run on 127.0.0.1 (CPU, gloo collectives)."""

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "helpers" / "multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_agree(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i),
                               str(tmp_path / "work")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
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
