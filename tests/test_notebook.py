"""examples/first_atlas.ipynb runs top to bottom on a real Jupyter kernel (nbclient), and says what the sweeps said."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # Ray and the embedded model, on a Jupyter kernel

NOTEBOOK = REPO / "examples" / "first_atlas.ipynb"


def outputs(cell) -> str:
    return "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in cell.get("outputs", ()))


def test_the_first_atlas_notebook_runs_and_its_hook_moves_the_logit_difference_as_the_sweep_said(tmp_path,
                                                                                                   monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    wall = time.monotonic() - start
    print(f"notebook wall time {wall:.1f} s, load average {open('/proc/loadavg').read().split()[:3]}")
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    said = "".join(outputs(c) for c in cells)
    streams = "".join(o.get("text", "") for c in cells for o in c.get("outputs", ()) if o["output_type"] == "stream")
    assert "Traceback" not in said and "\x1b[" not in streams  # printed lines carry no terminal escape codes
    # the notebook progress bar (an HTML <progress> display updated in place) is not asserted: nbclient records only
    # its last state, an empty display once the sweep ends
    check = next(json.loads(line.split("check:", 1)[1]) for c in cells for line in outputs(c).splitlines()
                 if line.startswith("check:"))
    assert check["table_rows"] == 8 and check["hub_rows"] == 1
    assert abs(check["recorded"]) > 0.1  # the strongest mean_diff point moves something
    assert check["measured"] == pytest.approx(check["recorded"], rel=0.02, abs=0.01)
    pngs = [c for c in cells if any("image/png" in o.get("data", {}) for o in c.get("outputs", ()))]
    assert len(pngs) >= 2  # the ablation profile and the steering heatmap, drawn inline
    assert (tmp_path / "mlflow.db").is_file()
