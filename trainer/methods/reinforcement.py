"""Online RL jobs (GRPO, RLOO, ReMax, NGRPO, PPO with a critic; PF-PPO filtering with any of
them): `trainer.online.loop`."""

from __future__ import annotations

from trainer.context import TrainingContext, TrainingResult
from trainer.online.loop import OnlineLoop


def run(ctx: TrainingContext) -> TrainingResult:
    """Train per ctx.hyperparameters (a ReinforcementHyperparameters subclass) against
    ctx.reward; raises JobStopped if stopped."""
    loop = OnlineLoop(ctx)
    result: TrainingResult = loop.train()
    return result
