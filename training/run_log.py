"""What a run folder records every iteration: metrics.csv, TensorBoard scalars, learning_curve.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from tocpl_training.checkpoint import atomic_write_bytes

METRICS = "metrics.csv"
CURVE = "learning_curve.png"


class RunLog:
    """The human-facing records of a run; the checkpoint's metrics are the source of truth."""

    def __init__(self, out_dir: Path, title: str, error_unit: str):
        self.out_dir = out_dir
        self.title = title
        self.scale, self.unit = {"m": (100.0, "cm"), "rad": (float(np.rad2deg(1.0)), "deg")}.get(error_unit, (1.0, error_unit))
        self._writer = None

    def write(self, rows: list[dict[str, float]], curve: bool = True) -> None:
        """Rewrite the CSV (and the curve: drawing it costs more than the rest) from all rows; append
        the newest row to TensorBoard."""
        self.write_csv(rows)
        self._write_tensorboard(rows[-1:])
        if curve:
            self._write_curve(rows)

    def restart(self, rows: list[dict[str, float]]) -> None:
        """On resume: make every record equal to the checkpoint's ``rows``.

        A run killed after its last checkpoint may have logged a row the checkpoint
        does not hold (or the reverse); that iteration is run again, so the CSV and
        the curve are rewritten and TensorBoard is told to forget every earlier step
        (``purge_step``) before the rows are written again: no duplicated iteration.
        """
        if not rows:
            return
        self.write_csv(rows)
        self._write_tensorboard(rows, purge_from=1)
        self._write_curve(rows)

    def write_csv(self, rows: list[dict[str, float]]) -> None:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.out_dir / METRICS, text.getvalue().encode())

    def _write_tensorboard(self, rows, purge_from: int | None = None):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge_from)
        for row in rows:
            self._add_scalars(row)
        self._writer.flush()

    def _add_scalars(self, row):
        step = int(row["iteration"])
        for key, value in row.items():
            if key != "iteration" and np.isfinite(value):
                self._writer.add_scalar(key, value, step)

    def _write_curve(self, rows):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in rows if "final_error_mean" in r]  # the evaluated iterations (TrainConfig.eval_every)
        evals = np.array([r["dynamics_evaluations"] for r in rows])
        wall = np.array([r["wall_time"] for r in rows])
        mean = self.scale * np.array([r["final_error_mean"] for r in rows])
        p95 = self.scale * np.array([r["final_error_p95"] for r in rows])
        gap = np.array([r["cost_gap_median"] for r in rows])
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, x, label in ((axes[0], evals, "dynamics evaluations"), (axes[1], wall, "wall time (s)")):
            ax.plot(x, mean, "o-", label="mean")
            ax.plot(x, p95, "s--", label="p95")
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.set_ylabel(f"final error ({self.unit})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        axes[2].plot(evals, np.maximum(gap, 1e-6), "o-")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("dynamics evaluations")
        axes[2].ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        axes[2].set_ylabel("cost gap to TO (median)")
        axes[2].grid(True, which="both", alpha=0.3)
        fig.suptitle(self.title)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(self.out_dir / CURVE, png.getvalue())

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
