"""Training methods by job `method.type`: each is `run(ctx: TrainingContext) -> TrainingResult`."""

from __future__ import annotations

from collections.abc import Callable

from trainer.context import TrainingContext, TrainingResult
from trainer.methods import dpo, reinforcement, reward_model, supervised, value_model

METHODS: dict[str, Callable[[TrainingContext], TrainingResult]] = {
    "supervised": supervised.run,
    "reward_model": reward_model.run,
    "value_model": value_model.run,
    "reinforcement": reinforcement.run,
    "dpo": dpo.run,
}
