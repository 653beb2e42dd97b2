"""Compare the runs of a sweep folder: `report.md`, a table per task, and PNG plots beside it.

    python -m mtl_lightning.report logs/compare/<time>

Each run folder (`<n>_<run_name>/`) is read from its `metrics.csv` (CSV logger),
`.hydra/config.yaml`, `.hydra/overrides.yaml` and `summary.json` (written by `train()`); nothing
is retrained. The plots need matplotlib (the `report` extra), imported only when plotting.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from mtl_lightning.errors import ConfigError, one_line_errors
from mtl_lightning.summary import read_summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.md"
TIME_PLOT = "time_vs_accuracy.png"
MISSING = "—"


@dataclass
class Run:
    """One run folder of a sweep: its config, its metrics by epoch, its summary."""

    folder: Path
    scenario: str
    seed: int | None
    overrides: list[str]
    history: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """`(epoch, value)` per epoch, the last value of an epoch logged twice (a resume)."""
        by_epoch = {
            epoch: value for epoch, value in self.history.get(metric, []) if epoch is not None
        }
        return sorted(by_epoch.items())

    def best(self, metric: str) -> float | None:
        values = [value for _, value in self.history.get(metric, [])]
        return max(values) if values else None

    def last(self, metric: str) -> float | None:
        values = self.history.get(metric, [])
        return values[-1][1] if values else None

    @property
    def train_seconds(self) -> float | None:
        return self.summary.get("train_seconds")

    @property
    def trainable_params(self) -> int | None:
        return self.summary.get("trainable_params")


def _read_metrics(path: Path) -> dict[str, list[tuple[int | None, float]]]:
    """Every logged value of `metrics.csv`, in logging order, keyed by metric name."""
    history: dict[str, list[tuple[int | None, float]]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            epoch = int(row["epoch"]) if row.get("epoch") else None
            for key, value in row.items():
                if key in ("epoch", "step") or not value:
                    continue
                history.setdefault(key, []).append((epoch, float(value)))
    return history


def _job_order(folder: Path) -> tuple[float, str]:
    """Hydra's job number first (`10_x` after `2_x`), then the name."""
    match = re.match(r"(\d+)_", folder.name)
    return (int(match.group(1)) if match else math.inf, folder.name)


def load_run(folder: Path) -> Run:
    """Read one run folder (it has `.hydra/config.yaml` and `metrics.csv`)."""
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    # Literal keys only: the rest holds `${hydra:...}` interpolations, unresolvable out of Hydra.
    return Run(
        folder=folder,
        scenario=str(OmegaConf.select(config, "freezing.scenario", default=MISSING)),
        seed=OmegaConf.select(config, "seed", default=None),
        overrides=[str(o) for o in overrides],
        history=_read_metrics(folder / "metrics.csv"),
        summary=read_summary(folder),
    )


def load_runs(sweep_dir: str | Path) -> list[Run]:
    """The runs of a sweep folder, in job order: folders with `.hydra/config.yaml` and metrics."""
    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise ConfigError(f"sweep folder {sweep} does not exist: give a multirun's sweep folder.")
    folders = [
        p
        for p in sorted(sweep.iterdir(), key=_job_order)
        if (p / ".hydra" / "config.yaml").is_file() and (p / "metrics.csv").is_file()
    ]
    if not folders:
        raise ConfigError(
            f"sweep folder {sweep} holds no run folders with .hydra/config.yaml and metrics.csv: "
            "give the hydra.sweep.dir of a finished multirun, e.g. logs/compare/<time>."
        )
    return [load_run(folder) for folder in folders]


def task_names(runs: Sequence[Run]) -> list[str]:
    """Tasks with validation accuracy in any run, in order of first appearance."""
    tasks: dict[str, None] = {}
    for run in runs:
        for metric in run.history:
            match = re.fullmatch(r"val/([^/]+)/acc", metric)
            if match:
                tasks.setdefault(match.group(1))
    return list(tasks)


def _fmt(value: float | int | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_report(runs: Sequence[Run], tasks: Sequence[str], plots: Sequence[str]) -> str:
    """The report's text: settings, an overall table, one table per task, the plots."""
    seeds = sorted({str(run.seed) for run in runs})
    seed_line = (
        f"Seed {seeds[0]} in every run."
        if len(seeds) == 1
        else f"Seeds differ between runs ({', '.join(seeds)}): not a like-for-like comparison."
    )
    lines = [
        "# Scenario comparison",
        "",
        f"{len(runs)} runs. {seed_line} Best val values are maxima over epochs; test values are "
        "of the best checkpoint by `val/acc_mean` (entire_network_frozen: of the model as "
        "loaded); train time is the wall time of fitting, validation included (0 when nothing "
        "trains); trainable params are those of the last epoch.",
        "",
        "## Overall",
        "",
    ]
    lines += _table(
        [
            "run",
            "scenario",
            "best val acc (mean)",
            "test acc (mean)",
            "train time (s)",
            "trainable params",
        ],
        [
            [
                run.name,
                run.scenario,
                _fmt(run.best("val/acc_mean"), ".4f"),
                _fmt(run.last("test/acc_mean"), ".4f"),
                _fmt(run.train_seconds, ".1f"),
                _fmt(run.trainable_params, ","),
            ]
            for run in runs
        ],
    )
    for task in tasks:
        lines += ["", f"## Task `{task}`", ""]
        lines += _table(
            ["run", "scenario", "best val acc", "best val F1", "test acc", "test F1", "forgetting"],
            [
                [
                    run.name,
                    run.scenario,
                    _fmt(run.best(f"val/{task}/acc"), ".4f"),
                    _fmt(run.best(f"val/{task}/f1"), ".4f"),
                    _fmt(run.last(f"test/{task}/acc"), ".4f"),
                    _fmt(run.last(f"test/{task}/f1"), ".4f"),
                    _fmt(run.last(f"val/{task}/forgetting"), "+.4f"),
                ]
                for run in runs
            ],
        )
    if any(run.history.get(f"val/{task}/forgetting") for run in runs for task in tasks):
        lines += [
            "",
            "Forgetting (only_head_frozen, the frozen head's task): val accuracy when the head "
            "froze minus at the last epoch; positive means the task got worse.",
        ]
    lines += ["", "## Runs", ""]
    lines += [f"- `{run.name}`: {' '.join(run.overrides) or '(defaults)'}" for run in runs]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(plot).stem}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def _figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        raise ConfigError(
            "mtl_lightning.report needs matplotlib for its plots, which is not installed: "
            "`pip install -e '.[report]'` (or `pip install matplotlib`)."
        ) from error
    # A bare Figure, not pyplot: no GUI backend, no global state, works in any process.
    return Figure(figsize=(6.4, 4.2), layout="constrained")


def _color(index: int) -> str:
    """The same colour for a run in every plot, whichever runs a plot leaves out."""
    return f"C{index % 10}"


def plot_val_curves(runs: Sequence[Run], task: str) -> Figure:
    """Validation accuracy of `task` per epoch, one line per run."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure()
    axes = figure.add_subplot()
    for index, run in enumerate(runs):
        points = run.curve(f"val/{task}/acc")
        if points:
            epochs, values = zip(*points, strict=True)
            axes.plot(epochs, values, marker="o", label=run.name, color=_color(index))
    axes.set(title=f"{task}: validation accuracy", xlabel="epoch", ylabel="val accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def plot_time_vs_accuracy(runs: Sequence[Run]) -> Figure:
    """Train time against mean test accuracy, one point per run."""
    figure = _figure()
    axes = figure.add_subplot()
    for index, run in enumerate(runs):
        accuracy = run.last("test/acc_mean")
        if run.train_seconds is None or accuracy is None:
            continue
        axes.scatter(run.train_seconds, accuracy, color=_color(index))
        axes.annotate(
            run.name,
            (run.train_seconds, accuracy),
            fontsize="small",
            xytext=(4, 4),
            textcoords="offset points",
        )
    axes.margins(x=0.25, y=0.15)  # room for the labels of the outermost points
    axes.set(
        title="train time vs test accuracy",
        xlabel="train time (s)",
        ylabel="test accuracy (mean over tasks)",
    )
    axes.grid(alpha=0.3)
    return figure


def write_report(sweep_dir: str | Path) -> Path:
    """Write `report.md` and its PNG plots into the sweep folder; return the report's path."""
    sweep = Path(sweep_dir).expanduser()
    runs = load_runs(sweep)
    tasks = task_names(runs)
    figures = {f"val_acc_{task}.png": plot_val_curves(runs, task) for task in tasks}
    figures[TIME_PLOT] = plot_time_vs_accuracy(runs)
    for name, figure in figures.items():
        figure.savefig(sweep / name, dpi=120)
    report = sweep / REPORT_FILE
    report.write_text(markdown_report(runs, tasks, list(figures)), encoding="utf-8")
    return report


@one_line_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mtl_lightning.report <sweep_dir>`: a config mistake is one line, no trace."""
    parser = argparse.ArgumentParser(
        prog="python -m mtl_lightning.report",
        description="Write report.md and PNG plots comparing the runs of a sweep folder.",
    )
    parser.add_argument("sweep_dir", help="a multirun's sweep folder, e.g. logs/compare/<time>")
    args = parser.parse_args(argv)
    print(f"Wrote {write_report(args.sweep_dir)}")


if __name__ == "__main__":
    main()
