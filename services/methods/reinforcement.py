"""`method.reinforcement`: online RL on prompt rows. Each step samples `group_size` responses to
each of `prompts_per_step` prompts from the live policy, scores them with `reward`, and updates
the policy with the algorithm's advantage estimator and clipped surrogate (DESIGN §4).

`{"algorithm": "grpo", "reward": <reward spec>, "hyperparameters": {...}}`. OpenAI's
reinforcement jobs name the reward `grader` and have no algorithm; both are accepted, and the
job is stored with `reward` and its algorithm. The hyperparameters are a union discriminated by
the algorithm: the knobs every algorithm shares in `ReinforcementHyperparameters`, one subclass
per algorithm with its own options and defaults. Adding an algorithm is a subclass and a member
of `AlgorithmHyperparameters`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.methods.base import (
    FieldError,
    LoraConfig,
    MethodSection,
    OptimizerHyperparameters,
    RewardSpec,
    StrictModel,
    field_errors,
)

SHAPES = ("prompt_only", "conversational_prompt_only", "openai_rft")
"""The row shapes (`services.datasets.SHAPES`) it trains on: prompts, as text or messages;
a row's other fields are the reward's `item` (`{{item.answer}}`)."""

Beta = Annotated[float, Field(ge=0, le=100)]
KlEstimator = Literal["k1", "k2", "k3"]
KlPlacement = Literal["loss", "reward"]


class PolicyFilter(StrictModel):
    """PF-PPO (Zhang et al. 2024): of the `group_size` responses sampled per prompt, train on
    `keep` chosen by reward, whose extremes a reward model ranks most reliably."""

    strategy: Literal["best", "best_random", "best_worst"]
    """"best": the `keep` best; "best_random": the best half and others drawn at random;
    "best_worst": the best half and the worst."""
    keep: Annotated[int, Field(ge=1)]
    """Responses kept per prompt; fewer than group_size."""


class ReinforcementHyperparameters(OptimizerHyperparameters):
    """The knobs every online algorithm shares. A step is one rollout → score → update."""

    algorithm: str
    """Set from `method.reinforcement.algorithm`; each subclass pins its own name."""

    default_clip_range: ClassVar[tuple[float, float]] = (0.2, 0.2)
    """(ε_low, ε_high) when clip_range_low / clip_range_high are not given."""
    compares_group: ClassVar[bool] = False
    """The advantage compares the responses to one prompt with each other: it needs two."""
    weighs_by_ratio: ClassVar[bool] = True
    """The update weighs each token by π_θ/π_old, π_old being the full softmax at
    `temperature` that the rollouts are taken to be drawn from."""

    prompts_per_step: Annotated[int, Field(ge=1, le=1024)] = 8
    """Prompts sampled from the training file per step."""
    group_size: Annotated[int, Field(ge=1, le=256)] = 4
    """Responses sampled per prompt."""
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 16
    """Most tokens sampled per response."""
    temperature: Annotated[float, Field(gt=0, le=10)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Sample from the k likeliest tokens only; 0 samples from the whole vocabulary. Only
    superhf takes it: the other algorithms' π_old is the whole softmax at `temperature`."""
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Sample from the smallest set of tokens whose probability reaches top_p (superhf only,
    as top_k)."""

    update_epochs: Annotated[int, Field(ge=1, le=64)] = 1
    """Passes over each step's rollouts."""
    minibatch_size: Annotated[int, Field(ge=1)] | None = None
    """Sequences per optimizer step; None: all of the step's (one optimizer step per epoch)."""
    micro_batch_size: Annotated[int, Field(ge=1)] = 32
    """Sequences per forward pass; a minibatch accumulates the gradients of its micro-batches."""

    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 1e-5
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"

    clip_range_low: Annotated[float, Field(ge=0, le=10)] | None = None
    """ε_low: the probability ratio is clipped below at 1 − ε_low; None: the algorithm's."""
    clip_range_high: Annotated[float, Field(ge=0, le=10)] | None = None
    """ε_high: the probability ratio is clipped above at 1 + ε_high; None: the algorithm's."""

    beta: Beta = 0.0
    """KL coefficient β to the reference policy (the base model); 0 needs no reference."""
    kl_estimator: KlEstimator = "k3"
    """Per-token estimator of KL(π_θ ‖ π_ref) (Schulman, "Approximating KL divergence")."""
    kl_in: KlPlacement = "loss"
    """"loss": β·KL is added to the policy loss (GRPO); "reward": subtracted from the
    per-token reward before the advantage (Ziegler et al. 2019)."""
    kl_target: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """When set, β adapts so that the KL tracks this target (adaptive KL controller, Ziegler et
    al. 2019), starting from `beta`."""
    kl_horizon: Annotated[int, Field(ge=1)] = 10_000
    """Horizon of the adaptive KL controller, in sampled sequences."""
    entropy_coefficient: Annotated[float, Field(ge=0, le=10)] = 0.0
    """Weight of the entropy bonus subtracted from the loss."""
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"
    """How per-token losses become one: mean over all tokens of the minibatch, mean of each
    sequence's mean, or sum divided by a constant (max_new_tokens; Dr. GRPO)."""

    reward_normalization: Literal["none", "batch", "running"] = "none"
    """Rewards standardised by the step's statistics, by running ones, or left as scored."""
    reward_clip: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Clip (normalised) rewards to [−reward_clip, reward_clip]."""
    whiten_advantages: bool = False
    """Standardise the advantages over the step's tokens."""
    rollout_is_cap: Annotated[float, Field(ge=1, le=1000)] | None = None
    """Truncated importance sampling of the sampler/trainer gap (Yao et al. 2025, as verl and
    OpenRLHF offer it): each token's policy loss is weighed by min(π_old/p_sampler, cap), where
    p_sampler is what the rollout engine (vLLM's kernels, or the torch engine's) gave the
    token. Off (None) by default; 2 is the usual cap. Needs temperature 1 (the engines report
    log p at temperature 1)."""
    policy_filter: PolicyFilter | None = None
    """PF-PPO: train on some of each prompt's responses only."""
    disable_dropout: bool = True
    """Dropout off in the policy and critic while they train (a checkpoint's own, GPT-2's 0.1,
    and a LoRA adapter's), as it is while sampling: the update's π_θ is then the function
    that drew the samples, so its ratio to π_old is not dropout noise (TRL's option of the
    same name). False trains with the dropout the checkpoint declares."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter (peft) instead of all weights."""

    max_steps: Annotated[int, Field(ge=1, le=100_000)] = 100
    """Steps of rollout → update."""
    checkpoint_every: Annotated[int, Field(ge=1)] = 10
    """Steps between resumable checkpoints (one is always written at the end)."""
    eval_every: Annotated[int, Field(ge=1)] = 10
    """Steps between evaluations on the validation prompts when a validation file is given."""
    max_seq_length: Annotated[int, Field(ge=8, le=131072)] = 512
    """Prompt and completion together, in tokens."""

    def clip_range(self) -> tuple[float, float]:
        """(ε_low, ε_high): the ratio π_θ/π_old is kept in [1 − ε_low, 1 + ε_high]."""
        low, high = self.default_clip_range
        return (low if self.clip_range_low is None else self.clip_range_low,
                high if self.clip_range_high is None else self.clip_range_high)

    @property
    def responses_kept(self) -> int:
        """Responses per prompt that the update trains on (after the policy filter)."""
        return self.policy_filter.keep if self.policy_filter else self.group_size

    @property
    def sequences_per_step(self) -> int:
        """Responses a step's update trains on, over all its prompts."""
        return self.prompts_per_step * self.responses_kept

    @model_validator(mode="before")
    @classmethod
    def _options_of_other_algorithms(cls, data: Any) -> Any:
        """An option of another algorithm is refused with the fix, not as an unknown field."""
        if not isinstance(data, dict):
            return data
        algorithm = data.get("algorithm") or cls.model_fields["algorithm"].default
        errors: list[FieldError] = []
        for name in data:
            if name in cls.model_fields:
                continue
            owners = [other for other, model in HYPERPARAMETERS.items()
                      if name in model.model_fields]
            if owners:
                errors.append(FieldError(name, f"{name} is an option of algorithm "
                                         f"{' or '.join(map(repr, owners))}, not {algorithm!r}; "
                                         f"remove it or set algorithm to {owners[0]!r}",
                                         data[name]))
        if errors:
            raise field_errors(cls.__name__, errors)
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> ReinforcementHyperparameters:
        errors = self._group_errors() + self._batch_errors()
        if self.max_new_tokens >= self.max_seq_length:
            errors.append(FieldError("max_new_tokens", "max_new_tokens must be less than "
                                     f"max_seq_length ({self.max_seq_length}), which bounds "
                                     "prompt and completion together", self.max_new_tokens))
        if self.weighs_by_ratio:
            errors += [FieldError(name, f"{name} truncates the sampling distribution, but "
                                  f"{self.algorithm}'s update takes π_old, the policy the "
                                  "rollouts come from, as the whole softmax at temperature: "
                                  "its ratios and KL would be wrong by an amount nothing "
                                  f"corrects; leave {name} out (use it at inference)",
                                  value)
                       for name, value, full in (("top_k", self.top_k, 0),
                                                 ("top_p", self.top_p, 1.0))
                       if value != full]
        if self.rollout_is_cap is not None and (self.temperature != 1.0
                                                or not self.weighs_by_ratio):
            errors.append(FieldError("rollout_is_cap", "rollout_is_cap weighs the update by "
                                     "π_old over the sampler's log p, which the rollout "
                                     "engines report at temperature 1 and which "
                                     f"{self.algorithm}'s update takes "
                                     + ("no ratio to" if not self.weighs_by_ratio else
                                        f"at temperature {self.temperature}")
                                     + ": set temperature 1 and use a ratio-based algorithm, "
                                     "or leave rollout_is_cap out", self.rollout_is_cap))
        if self.kl_estimator == "k1" and self.kl_in == "loss" and self.beta > 0:
            errors.append(FieldError("kl_estimator", "kl_estimator 'k1' with kl_in 'loss' "
                                     "does nothing: its gradient averages to zero on the "
                                     "policy's own samples; use 'k3' or 'k2' in the loss, or "
                                     "kl_in 'reward' for k1", self.kl_estimator))
        if self.kl_target is not None and self.beta == 0:
            errors.append(FieldError("kl_target", "kl_target adapts beta, which is 0; give beta "
                                     "a starting value > 0 or leave kl_target out",
                                     self.kl_target))
        if errors:
            raise field_errors(type(self).__name__, errors)
        return self

    def _group_errors(self) -> list[FieldError]:
        errors: list[FieldError] = []
        why = (f"for algorithm {self.algorithm!r}, whose advantage compares the responses to "
               "one prompt with each other")
        if self.compares_group and self.group_size < 2:
            errors.append(FieldError("group_size", f"group_size must be at least 2 {why}",
                                     self.group_size))
        if self.policy_filter is None:
            return errors
        keep = self.policy_filter.keep
        if keep >= self.group_size:
            errors.append(FieldError("policy_filter.keep", "policy_filter.keep must be less "
                                     f"than group_size ({self.group_size}): it keeps some of "
                                     "each prompt's responses", keep))
        elif self.compares_group and keep < 2:
            errors.append(FieldError("policy_filter.keep",
                                     f"policy_filter.keep must be at least 2 {why}", keep))
        return errors

    def _batch_errors(self) -> list[FieldError]:
        if self.minibatch_size is None or self.minibatch_size <= self.sequences_per_step:
            return []
        kept = ("policy_filter.keep" if self.policy_filter else
                "group_size" if self.responses_kept == self.group_size else "responses kept")
        return [FieldError("minibatch_size", "minibatch_size must be at most the sequences of a "
                           f"step, prompts_per_step × {kept} = {self.prompts_per_step} × "
                           f"{self.responses_kept} = {self.sequences_per_step}",
                           self.minibatch_size)]


class GrpoHyperparameters(ReinforcementHyperparameters):
    """GRPO (Shao et al. 2024, DeepSeekMath): a response's advantage is its reward minus its
    group's mean, divided by the group's standard deviation; no critic."""

    algorithm: Literal["grpo"] = "grpo"
    compares_group: ClassVar[bool] = True

    scale_rewards: bool = True
    """Divide by the group's reward std; False leaves the advantage unscaled, so that
    questions of little variance are not weighted up. Dr. GRPO (Liu et al. 2025) is
    `scale_rewards: false` *with* `loss_aggregation: "constant"` (no per-response length
    normalisation): set both for it."""


class RlooHyperparameters(ReinforcementHyperparameters):
    """RLOO (Ahmadian et al. 2024): a response's baseline is the mean reward of the other
    responses to its prompt."""

    algorithm: Literal["rloo"] = "rloo"
    compares_group: ClassVar[bool] = True


class RemaxHyperparameters(ReinforcementHyperparameters):
    """ReMax (Li et al. 2023): a response's baseline is the reward of the greedy response to
    its prompt, normalised and clipped as the sampled rewards are (the same statistics)."""

    algorithm: Literal["remax"] = "remax"

    @model_validator(mode="after")
    def _baseline_on_the_rewards_scale(self) -> RemaxHyperparameters:
        if self.kl_in == "reward" and self.beta > 0:
            raise field_errors(type(self).__name__, [FieldError(
                "kl_in", "remax with kl_in 'reward' would subtract the KL penalty from the "
                "sampled responses' rewards but not from the greedy baseline's, so the "
                "baseline is on another scale; use kl_in 'loss', or beta 0", self.kl_in)])
        return self


class NgrpoHyperparameters(ReinforcementHyperparameters):
    """NGRPO (Nan et al. 2025): GRPO with one virtual sample of reward r_max in every group, so
    that a group whose responses are all wrong still learns, and an asymmetric clip."""

    algorithm: Literal["ngrpo"] = "ngrpo"
    compares_group: ClassVar[bool] = True
    default_clip_range: ClassVar[tuple[float, float]] = (0.16, 0.24)

    r_max: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    """The virtual sample's reward: the highest reward the grader gives (clipped by
    reward_clip as the rewards are)."""

    @model_validator(mode="after")
    def _raw_rewards(self) -> NgrpoHyperparameters:
        """r_max is a raw reward: rewards moved by normalisation or a KL penalty would be
        compared with it on another scale (an all-correct group would look all-wrong)."""
        errors = []
        if self.reward_normalization != "none":
            errors.append(FieldError(
                "reward_normalization", "ngrpo compares each reward with r_max "
                f"({self.r_max}), the grader's raw best; normalised rewards are on another "
                "scale: set reward_normalization to 'none'", self.reward_normalization))
        if self.kl_in == "reward" and self.beta > 0:
            errors.append(FieldError(
                "kl_in", "ngrpo compares each reward with r_max, the grader's raw best; a KL "
                "penalty in the reward moves every reward below it: use kl_in 'loss', or "
                "beta 0", self.kl_in))
        if errors:
            raise field_errors(type(self).__name__, errors)
        return self


class PpoHyperparameters(ReinforcementHyperparameters):
    """PPO (Schulman et al. 2017) as in RLHF (Ouyang et al. 2022): a learned critic, GAE
    advantages, and by default the KL penalty in the per-token reward (Ziegler et al. 2019)."""

    algorithm: Literal["ppo"] = "ppo"
    named_model_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "critic_model": ("reward_model",)}

    beta: Beta = 0.05
    kl_estimator: KlEstimator = "k1"
    kl_in: KlPlacement = "reward"
    whiten_advantages: bool = True

    gamma: Annotated[float, Field(ge=0, le=1)] = 1.0
    """GAE's discount per token."""
    lam: Annotated[float, Field(ge=0, le=1)] = 0.95
    """GAE's λ: 0 is one-step TD (biased), 1 Monte Carlo (high variance)."""
    value_coefficient: Annotated[float, Field(ge=0, le=100)] = 0.1
    """Weight of the critic's loss."""
    value_clip: Annotated[float, Field(gt=0, le=100)] | None = 0.2
    """New values are clipped to within value_clip of the rollout's; None: not clipped."""
    critic_model: Annotated[str, Field(min_length=1)] | None = None
    """A registered reward model id to initialise the critic from; None: a value head on the
    policy's own weights."""
    critic_learning_rate: Annotated[float, Field(gt=0, le=1.0)] | None = None
    """The critic's learning rate; None: learning_rate."""


class RtoHyperparameters(PpoHyperparameters):
    """RTO (Zhong et al. 2024, "DPO Meets PPO: Reinforced Token Optimization"): PPO over dense
    token rewards r_t = β₁·log(π_dpo/π_ref)(a_t|s_t) − β₂·log(π/π_ref)(a_t|s_t), plus β₃ × the
    sentence reward on the last token, where π_dpo is a model a `dpo` job trained."""

    algorithm: Literal["rto"] = "rto"  # type: ignore[assignment]
    named_model_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "critic_model": ("reward_model",), "dpo_model": ("fine_tuned",)}

    dpo_model: Annotated[str, Field(min_length=1)]
    """The registered model (full weights) a `dpo` job trained from the same base model."""
    beta_dpo: Annotated[float, Field(ge=0, le=100)] = 0.05
    """β₁: the weight of the DPO model's token-level log-ratio."""
    beta: Beta = 0.01
    """β₂: the KL penalty's weight in the token reward."""
    reward_coefficient: Annotated[float, Field(ge=0, le=100)] = 1.0
    """β₃: the weight of the reward service's sentence-level reward."""


class SuperhfHyperparameters(ReinforcementHyperparameters):
    """SuperHF (Mukobi et al. 2023): sample group_size responses per prompt, keep the one the
    reward ranks best, and take supervised steps on those with a KL prior (β) to the base
    model."""

    algorithm: Literal["superhf"] = "superhf"
    compares_group: ClassVar[bool] = True
    weighs_by_ratio: ClassVar[bool] = False

    beta: Beta = 0.1
    """The KL prior's weight, in the loss."""

    @property
    def responses_kept(self) -> int:
        """One per prompt: its best."""
        return 1

    @model_validator(mode="after")
    def _keeps_its_best(self) -> SuperhfHyperparameters:
        errors = []
        if self.whiten_advantages:
            errors.append(FieldError("whiten_advantages", "superhf weighs every kept response "
                                     "1 (a supervised step); whitening makes those weights 0 "
                                     "and trains nothing: set whiten_advantages false",
                                     self.whiten_advantages))
        if self.policy_filter is not None:
            errors.append(FieldError("policy_filter", "superhf keeps the best response of "
                                     "each prompt itself; leave policy_filter out",
                                     self.policy_filter))
        if self.kl_in != "loss":
            errors.append(FieldError("kl_in", "superhf's KL prior is in the loss; leave kl_in "
                                     "out or set it to 'loss'", self.kl_in))
        if errors:
            raise field_errors(type(self).__name__, errors)
        return self


AlgorithmHyperparameters = Annotated[
    GrpoHyperparameters | RlooHyperparameters | RemaxHyperparameters | NgrpoHyperparameters
    | PpoHyperparameters | RtoHyperparameters | SuperhfHyperparameters,
    Field(discriminator="algorithm"),
]
HYPERPARAMETERS: dict[str, type[ReinforcementHyperparameters]] = {
    model.model_fields["algorithm"].default: model
    for model in get_args(get_args(AlgorithmHyperparameters)[0])
}
"""Each algorithm's hyperparameters, by name."""


class ReinforcementMethod(MethodSection):
    """`method.reinforcement`. `algorithm` comes first: the hyperparameters are read by it."""

    algorithm: str = "grpo"
    """One of HYPERPARAMETERS; OpenAI's jobs give none, and theirs is GRPO."""
    reward: RewardSpec
    """How responses are scored: a reward spec as POST /v1/score takes (OpenAI: `grader`)."""
    hyperparameters: AlgorithmHyperparameters

    @model_validator(mode="before")
    @classmethod
    def _reward_or_grader(cls, data: Any) -> Any:
        """OpenAI's `grader` is read as `reward`; exactly one of the two."""
        if not isinstance(data, dict):
            return data
        if "grader" in data and "reward" in data:
            raise field_errors(cls.__name__, [FieldError(
                "grader", "reward and grader are two names for the reward spec; give one of them",
                data["grader"])])
        if "grader" not in data and "reward" not in data:
            raise field_errors(cls.__name__, [FieldError(
                "reward", "a reward spec is required: give reward (or OpenAI's grader), an "
                "object as POST /v1/score takes", data)], kind="missing")
        data = {("reward" if key == "grader" else key): value for key, value in data.items()}
        return {"hyperparameters": {}, **data}

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, algorithm: str) -> str:
        if algorithm not in HYPERPARAMETERS:
            raise ValueError(f"unknown algorithm; choose one of {', '.join(HYPERPARAMETERS)}")
        return algorithm

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _for_the_algorithm(cls, value: Any, info: ValidationInfo) -> Any:
        """Validated here with the algorithm's class, so that errors keep OpenAI's paths
        (hyperparameters.group_size): the union's own would put the algorithm in them."""
        algorithm = info.data.get("algorithm")
        if algorithm not in HYPERPARAMETERS or not isinstance(value, dict):
            return value  # the algorithm's error comes first; or an instance the union checks
        given = value.get("algorithm", algorithm)
        if given != algorithm:
            raise ValueError(f"algorithm is {given!r} here but {algorithm!r} in the method; "
                             "set it once, as method.reinforcement.algorithm")
        return HYPERPARAMETERS[algorithm].model_validate({**value, "algorithm": algorithm})

    @model_validator(mode="after")
    def _one_algorithm(self) -> ReinforcementMethod:
        if self.hyperparameters.algorithm != self.algorithm:
            raise ValueError(f"hyperparameters are {self.hyperparameters.algorithm!r}'s but "
                             f"algorithm is {self.algorithm!r}")
        return self
