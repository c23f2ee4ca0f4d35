"""The KL coefficient β of online RL: fixed, or adapted to a target (Ziegler et al. 2019,
"Fine-Tuning Language Models from Human Preferences", §2.2).

Adaptive: e_t = clip(KL_t / KL_target − 1, −0.2, 0.2); β_{t+1} = β_t · (1 + K_β · e_t) with
K_β = n_t / horizon, n_t the samples of step t. β rises while the policy drifts past the
target and falls while it stays closer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KLController:
    value: float
    """β now."""
    target: float | None = None
    """KL_target; None keeps β fixed."""
    horizon: int = 10_000

    def update(self, kl: float, n_samples: int) -> None:
        """After a step whose mean sequence KL was ``kl`` over ``n_samples`` samples."""
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
