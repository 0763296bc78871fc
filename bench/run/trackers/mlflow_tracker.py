"""MLflow: one experiment per suite (``prefix-bench/<suite>``), one run per cell named by its
cell id, through MLflow's client (no global active run, so cells of one process never mix).
The default store is a local file store, ``RESULTS/mlruns`` (``mlflow ui --backend-store-uri
file://...``); any tracking URI MLflow takes (``sqlite:///...``, ``http://host:5000``) works too."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from bench.run.trackers.base import TRACKERS, TrackedRun, Tracker

METRICS_PER_CALL, PARAMS_PER_CALL = 1000, 100  # MLflow's limits for one log_batch call


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    """Runs in an MLflow tracking store (default: a local file store under the results folder)."""

    name = "mlflow"
    package = "mlflow-skinny"
    module = "mlflow"

    @classmethod
    def default_uri(cls, results_dir: Path) -> str:
        return (results_dir / "mlruns").as_uri()

    def _client(self):  # noqa: ANN202 (mlflow's type: the backend is imported only here)
        if self.uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked for it; the local default is one
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def load_backend(self) -> None:
        self._client()  # imports MLflow and opens the store: a refused URI fails here

    def prepare(self, experiments: Iterable[str]) -> None:
        client = self._client()
        for name in sorted(set(experiments)):
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name)

    def log(self, run: TrackedRun) -> None:
        from mlflow.entities import Metric, Param

        client = self._client()
        experiment = client.get_experiment_by_name(run.experiment)
        exp_id = experiment.experiment_id if experiment is not None else client.create_experiment(run.experiment)
        tags = {f"prefix_bench.{k}": v for k, v in run.tags.items()}
        rid = client.create_run(exp_id, run_name=run.name, tags=tags).info.run_id
        status = "FAILED"
        try:
            now = int(time.time() * 1000)
            metrics = [Metric(p.key, p.value, now, p.step) for p in run.points]
            params = [Param(k, v) for k, v in run.params.items()]
            for i in range(0, len(metrics), METRICS_PER_CALL):
                client.log_batch(rid, metrics=metrics[i:i + METRICS_PER_CALL])
            for i in range(0, len(params), PARAMS_PER_CALL):
                client.log_batch(rid, params=params[i:i + PARAMS_PER_CALL])
            status = "FINISHED" if run.ok else "FAILED"
        finally:
            client.set_terminated(rid, status=status)
