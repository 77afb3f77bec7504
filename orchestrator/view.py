"""The MLflow UI's view of a sweep: the classic runs table, every grid point in one flat list, axes and the kind's
primary metrics as columns.

MLflow 3.17's UI opens in its GenAI mode unless the URL says `workflowType=machine_learning`
(the experiment tag `mlflow.experimentKind` is not read while that switch exists). Columns,
filter and order come from a *shared view*: an experiment tag `mlflow.sharedViewState.<key>`
holding the view as JSON, opened by `?viewStateShareKey=<key>`. Filtering on the child role and
ordering by the primary metric lists every grid point flat, whichever parent run it sits under.
"""
from __future__ import annotations

import json

from orchestrator.grid import axis_order
from orchestrator.spec import Sweep
from orchestrator.store import ROLE_CHILD, TAG

SHARE_KEY = "causal-atlas"
POINTS_FILTER = f"tags.`{TAG}role` = '{ROLE_CHILD}'"


def view_state(sweep: Sweep) -> dict:
    metrics = list(dict.fromkeys([sweep.kind.primary, *sweep.kind.shown]))
    columns = [f"params.`{a}`" for a in axis_order(sweep) if a in sweep.axes] + [f"metrics.`{m}`" for m in metrics]
    # Ordered by anything but the start time, the table lists matching runs flat instead of folding them under parents
    return {"searchFilter": POINTS_FILTER, "orderByKey": f"metrics.`{sweep.kind.primary}`", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns}


def set_view(client, experiment_id: str, sweep: Sweep) -> None:
    """The experiment's kind (classic ML) and its shared runs-table view."""
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(view_state(sweep)))


def url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={SHARE_KEY}&workflowType=machine_learning"


def experiment_url(tracker, base: str = "http://127.0.0.1:5000") -> str:
    return url(tracker.experiment_id, base)
