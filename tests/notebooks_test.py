"""The notebooks execute end to end (shrunk by FAQ_NOTEBOOK_SMOKE=1), offline, on CPU."""

import os
import pathlib
import sys

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _kernel_name() -> str:
    """A kernel that runs this interpreter (so faq_jax imports); installs one if needed."""
    from jupyter_client import kernelspec

    spec = kernelspec.KernelSpecManager().get_all_specs().get("python3", {}).get("spec", {})
    cmd = (spec.get("argv") or [""])[0]
    # jupyter_client runs a spec's bare "python"/"python3" with sys.executable.
    if cmd in ("python", "python3") or os.path.realpath(cmd) == os.path.realpath(sys.executable):
        return "python3"
    from ipykernel import kernelspec as ipk

    ipk.install(user=True, kernel_name="faq_jax_test", display_name="faq_jax (tests)")
    return "faq_jax_test"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "convert_and_evaluate", "analysis"}
    monkeypatch.setenv("FAQ_NOTEBOOK_SMOKE", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=_kernel_name(),
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
