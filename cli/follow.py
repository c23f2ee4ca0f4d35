"""Watching a job from the terminal: `alignd jobs follow` (its events as they come, a progress
bar over its optimizer steps with the latest value of each metric under it, its end as the exit
status) and `alignd jobs metrics --plot` (each metric's curve)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.columns import Columns
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from services.client import AlignClient

JOB_EXIT_STATUS = {"succeeded": 0, "failed": 3, "cancelled": 4}
"""`alignd jobs follow`'s exit status for each way a job ends (1 is an error of the api or of
reaching it, 2 a usage error, as for every command)."""


def event_line(event: dict[str, Any]) -> Text:
    moment = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
    style = {"error": "red", "warning": "yellow"}.get(event["level"], "")
    return Text.assemble((moment, "dim"), f" {event['level']:7} ", (event["message"], style))


def expected_steps(hyperparameters: dict[str, Any], step: int, epoch: float | None,
                   member: int = 0) -> int | None:
    """The job's optimizer steps in all, until its `total_steps` is known (null until a
    worker has started it), as far as its hyperparameters and latest metrics tell
    (at ``step``: ``epoch``, the epochs of training rows read so far by the ensemble ``member``
    in training, each member reading them afresh):

    1. a method without epochs (online RL) runs `max_steps`;
    2. one with epochs runs M = min(ceil(n_epochs · n_rows / rows_per_step), max_steps) steps
       per member (the trainer's `count_steps`). A member reads rows_per_step / n_rows epochs
       a step, so after `member` whole members, step = member · M + epoch · M / n_epochs, and
       M = n_epochs · step / (epoch + member · n_epochs) (a cap by `max_steps` only makes this
       larger, so the min still finds it);
    3. before the first step is known, None (the bar pulses).
    """
    max_steps = hyperparameters.get("max_steps")
    n_epochs = hyperparameters.get("n_epochs")
    if n_epochs is None:
        return max_steps
    if not epoch:
        return None
    per_member = math.ceil(n_epochs * step / (epoch + member * n_epochs) - 1e-6)  # float noise
    if max_steps is not None:
        per_member = min(per_member, max_steps)
    return max(per_member * hyperparameters.get("ensemble_size", 1), step)


class JobProgress(Progress):
    """A bar over the job's optimizer steps (steps / total, ETA) with the latest value of
    each metric under it, read from the metrics endpoint a few points at a time."""

    def __init__(self, console: Console):
        self.step = 0
        self.epoch: float | None = None
        self.latest: dict[str, float] = {}
        super().__init__(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("steps"), TimeRemainingColumn(), console=console)
        self.task = self.add_task("", total=None)

    def read(self, client: AlignClient, job: dict[str, Any]) -> None:
        for series in client.metrics(job["id"], after_step=self.step):
            self.latest[series["name"]] = series["values"][-1]
            if series["name"] == "epoch":
                self.epoch = series["values"][-1]
            self.step = max(self.step, series["steps"][-1])
        total = job.get("total_steps") or expected_steps(  # the trainer's own count, once known
            job["hyperparameters"], self.step, self.epoch, int(self.latest.get("member", 0)))
        self.update(self.task, completed=self.step, total=total, description=job["status"])

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.latest:
            yield Columns([Text.assemble((name, "dim"), f" {value:.4g}")
                           for name, value in sorted(self.latest.items())], padding=(0, 3))


def follow_job(client: AlignClient, job_id: str, console: Console) -> dict[str, Any]:
    """Print the job's events above a live JobProgress until the job ends; the job as it
    ended."""
    updates = client.follow(job_id)
    first = next(updates)  # an unknown job or an absent api fails here, before any output
    with JobProgress(console) as progress:
        for event, job in itertools.chain([first], updates):
            if event is not None:
                progress.console.print(event_line(event), highlight=False, soft_wrap=True)
            else:
                progress.read(client, job)
        progress.read(client, job)
    return job


def metric_charts(series: list[dict[str, Any]], width: int, height: int = 14) -> list[str]:
    """One line chart per metric series, over its steps, ``width`` columns wide."""
    import plotext

    figure = plotext.figure
    charts = []
    for points in series:
        figure.clear()
        figure.plot_size(width, height)
        figure.draw(figure.signal(points["steps"], points["values"]))
        figure.title(points["name"])
        figure.label("step")
        charts.append(figure.build().string())
    return charts
