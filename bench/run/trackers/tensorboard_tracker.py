"""TensorBoard: one event-file folder per cell run, ``LOGDIR/<cell id>/<driver run id>`` (a
re-run cell gets a folder of its own beside the first), written with torch's SummaryWriter."""

from __future__ import annotations

from pathlib import Path

from bench.core.safe_names import check_name
from bench.run.trackers.base import TRACKERS, TrackedRun, Tracker


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """Event files for TensorBoard (``tensorboard --logdir RESULTS/tensorboard``)."""

    name = "tensorboard"
    package = "tensorboard"
    module = "tensorboard"

    @classmethod
    def default_uri(cls, results_dir: Path) -> str:
        return str(results_dir / "tensorboard")

    def load_backend(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)

    def run_dir(self, run: TrackedRun) -> Path:
        """Where ``run``'s event file goes; names from the row are checked before they name folders."""
        cell = check_name("cell id", run.name, "tensorboard")
        attempt = check_name("run id", run.tags.get("run_id") or "unknown", "tensorboard")
        root = self.uri.removeprefix("file://")
        return Path(root) / cell / attempt

    def log(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.run_dir(run)))
        try:
            for p in run.points:
                writer.add_scalar(p.key, p.value, global_step=p.step)
            rows = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in {**run.tags, **run.params}.items())
            writer.add_text("cell", f"| field | value |\n| --- | --- |\n{rows}", global_step=0)
        finally:
            writer.close()
