"""Config of `posttrain rl`: GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++ and GSPO from one loop, and
PPO (a critic, GAE and a KL-penalised reward) from its own loop in `recipes/rl/ppo.py`.

`algorithm.name` picks a preset (posttrain/algorithms/presets.py, each citing its paper);
every other `algorithm.*` key left at null takes the preset's value, and a key set in the
config wins. The resolved combination is printed and logged at start-up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Union

from posttrain.algorithms.presets import AlgorithmPreset, get_preset
from posttrain.config import (
    ConfigError, DataConfig, DistributedConfig, EvalConfig, ModelConfig, OptimConfig, PrecisionName, RunConfig,
    require,
)

# Advantage estimators that need a critic's values; algorithms using them run the PPO loop.
CRITIC_ESTIMATORS = frozenset({"gae"})


@dataclasses.dataclass
class AlgorithmConfig:
    name: str = "grpo"
    advantage: Union[str, None] = None
    policy_loss: Union[str, None] = None
    aggregation: Union[str, None] = None
    eps_low: Union[float, None] = None
    eps_high: Union[float, None] = None
    dual_clip: Union[float, None] = None
    kl_coef: Union[float, None] = None
    kl_estimator: Union[str, None] = None
    kl_placement: Union[Literal["loss", "reward"], None] = None
    dynamic_sampling: Union[bool, None] = None
    overlong_cache_fraction: Union[float, None] = None
    # For "seq-mean-token-sum-norm": a number, or "max_new_tokens" (Dr. GRPO's constant).
    loss_normaliser: Union[float, str, None] = None
    # GAE discount and λ (ppo).
    gamma: Union[float, None] = None
    lam: Union[float, None] = None
    # Adaptive KL (ppo; Ziegler et al. 2019): target KL per sample in nats (summed over its tokens),
    # and the horizon in samples over which β reacts. kl_target null = β fixed at kl_coef.
    kl_target: Union[float, None] = None
    kl_horizon: Union[float, None] = None

    def resolve(self) -> AlgorithmPreset:
        """The preset with every non-null key of this section laid over it."""
        preset = get_preset(self.name)
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "name" and getattr(self, f.name) is not None}
        return dataclasses.replace(preset, **changes)


@dataclasses.dataclass
class RolloutConfig:
    # What samples the rollouts: `hf` (in-process, the trained module itself), `ray` (`workers` HF
    # engines in Ray actors, each on a copy of the policy; engines/ray_engine.py), `vllm` (a vLLM
    # engine on the GPU, weights pushed after each update; engines/vllm_engine.py) or an import path
    # `package.module:function` taking (model, tokenizer) and returning an Engine (engines/factory.py).
    engine: str = "hf"
    # Engine replicas (`ray`) over all ranks (a multiple of the world size: each rank owns
    # workers / N of them); whole prompts with all their samples go to one replica.
    workers: int = 1
    # Seconds any call to a remote worker may take before it counts as hung (restarted once, then an error).
    worker_timeout_s: float = 300.0
    # Further keywords for the engine's factory (engines/factory.py), checked against it: `ray`:
    # worker_engine (the engine in each worker: hf or an import path), max_batch_size; `vllm`:
    # sleep_between_steps (free the GPU for the update), gpu_memory_utilization, max_model_len, ...
    engine_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    prompts_per_step: int = 16
    samples_per_prompt: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # DAPO dynamic sampling: how many extra generation rounds may refill dropped groups.
    max_refill_rounds: int = 3
    # Rollouts of each logged step kept as text in the run's rollouts.jsonl (prompt, completion,
    # reward, group; the first ones of the step's first round), for `posttrain report`. 0 = none.
    log_samples: int = 4
    # Correction for the sampler–trainer mismatch of an engine that does not share the trainer's
    # weights (`vllm`, `ray`; posttrain/algorithms/mismatch.py): `token` or `sequence` importance
    # weights π_trainer / π_sampler on the policy loss (truncated importance sampling, Yao et al.
    # 2025; verl's `rollout_is`), or `none`. When on, the old log-probs of the update are the
    # trainer's own, recomputed once per batch, and the sampler's enter only the weights; logged as
    # train/is_weight_mean and train/is_truncated_fraction. Not with `hf` (no mismatch to correct)
    # nor the critic loop (ppo).
    importance_correction: Literal["none", "token", "sequence"] = "none"
    # The cap C on the weights (>= 1; verl's and TRL's default is 2).
    importance_cap: float = 2.0
    # `truncate`: min(ρ, C) (TIS); `mask`: ρ where ρ <= C, 0 above (MIS: outlier tokens or sequences dropped).
    importance_mode: Literal["truncate", "mask"] = "truncate"


SANDBOX_LEVELS = ("filesystem", "network", "processes")  # posttrain.verifiers.sandbox.LEVELS


@dataclasses.dataclass
class SandboxConfig:
    """What the code sandbox must confine on this machine, checked once at start-up."""

    # Levels the run refuses to start without: "filesystem" (no writes outside the working
    # directory, no reading home directories), "network", "processes" (nothing survives a run).
    # A level the machine cannot provide and that is not required is warned about once.
    require: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [level for level in self.require if level not in SANDBOX_LEVELS]
        if unknown:
            raise ConfigError(f"reward.sandbox.require: unknown level(s) {unknown}; choose from {list(SANDBOX_LEVELS)}")


@dataclasses.dataclass
class RewardConfig:
    # Reward names (`arithmetic`, `math`, `code`) or import paths `package.module:function`.
    functions: list[str] = dataclasses.field(default_factory=lambda: ["arithmetic"])
    weights: Union[list[float], None] = None
    # A reward that raises, times out or returns a non-number (NaN, inf, a string): score 0 ("zero"),
    # exclude ("none") or stop ("raise"). Failures are counted in the metrics
    # (rewards/<name>/raised, timed_out, invalid) either way.
    on_error: Literal["zero", "none", "raise"] = "zero"
    # Seconds per reward call, always enforced: plain functions run in a worker process that is
    # killed on a hang (the only way to stop one); rewards with a `batch` method (math, reward
    # models) keep their own limits. 30 s is far above any legitimate call of the built-in rewards
    # and above the code sandbox's own 10 s limit (posttrain/verifiers/combine.py explains).
    timeout_s: float = 30.0
    # Ray actors that score each batch (contiguous chunks, one per actor), for CPU-heavy rewards such
    # as code and math verification; 0 = score in this process. Each actor resolves the functions
    # itself; every remote call has a deadline, and a worker that dies or stalls is restarted once
    # and its chunk retried (posttrain/verifiers/ray_rewards.py). Training and turn rewards only.
    workers: int = 0
    # Subtracted from the reward of a response that hit max_new_tokens without EOS (a reward model
    # would otherwise score the unfinished text as if it had ended). null = no penalty.
    missing_eos_penalty: Union[float, None] = None
    # Per-turn scores of multi-turn episodes (env.name set), through the same on_error / timeout_s
    # accounting: each function is called once per model turn with the conversation before the turn
    # as `prompt`, the turn's text as `completion`, and the row's columns plus `turn_index` (from 0)
    # and `num_turns`. An episode's reward = its outcome reward (`functions`) + turn_coef × the
    # mean over its turns of their weighted total. Logged as turn_rewards/<name>/*.
    turn_functions: list[str] = dataclasses.field(default_factory=list)
    turn_weights: Union[list[float], None] = None
    turn_coef: float = 1.0
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)

    def __post_init__(self) -> None:
        # Checked here, as the section is built, since a reward call without a limit can hang the run.
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ConfigError(f"reward.timeout_s must be a number of seconds > 0, got {self.timeout_s!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"reward.workers must be an int >= 0 (0: score in this process), got {self.workers!r}")


@dataclasses.dataclass
class CriticConfig:
    """The value model of algorithms that need one (ppo): a scalar head on a causal LM."""

    # "policy": the policy checkpoint with a fresh value head; or a reward-model directory
    # (`reward_model:<dir>` or just `<dir>`): its backbone and head, as is common in RLHF.
    init: str = "policy"
    # Weight of the value loss next to the policy loss (one optimizer steps both models).
    vf_coef: float = 0.1
    # The value clip ε: V may move at most ε from its rollout-time value per batch. null = no clip.
    value_clip: Union[float, None] = 0.2


@dataclasses.dataclass
class EnvConfig:
    """Multi-turn episodes (agentic RL). With `name` null each prompt gets one completion."""

    # An environment name (`spreadsheet`) or an import path `package.module:factory`, where
    # factory(env_config) returns an EnvironmentSpec or a function row -> Environment
    # (posttrain/envs/registry.py).
    name: Union[str, None] = None
    # Model turns per episode; `rollout.max_new_tokens` caps each turn.
    max_turns: int = 8
    # Model tokens per episode, over all its turns (null: max_turns × rollout.max_new_tokens).
    max_episode_tokens: Union[int, None] = None
    # Prompt + every turn + every observation (null: the model's max_position_embeddings).
    max_context: Union[int, None] = None
    # Seconds one tool call may run before the model sees a timeout error instead of its output.
    tool_timeout_s: float = 10.0
    # How tool calls are read from the model's text: `hermes` (Qwen, Hermes: <tool_call>{json}</tool_call>),
    # another registered family, or an import path (posttrain/agents/parsers.py).
    parser: str = "hermes"
    # The environment's own settings (e.g. the spreadsheet generator's workbook spec).
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        require(self.max_turns >= 1, f"env.max_turns must be >= 1, got {self.max_turns}")
        require(self.max_episode_tokens is None or self.max_episode_tokens >= 1,
                f"env.max_episode_tokens must be >= 1 or null, got {self.max_episode_tokens}")
        require(self.max_context is None or self.max_context >= 2,
                f"env.max_context must be >= 2 or null, got {self.max_context}")
        require(self.tool_timeout_s > 0, f"env.tool_timeout_s must be > 0, got {self.tool_timeout_s}")


@dataclasses.dataclass
class RLConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(eval_fraction=0.05))
    optim: OptimConfig = dataclasses.field(
        default_factory=lambda: OptimConfig(lr=1e-5, schedule="constant", max_grad_norm=1.0))
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(name="rl", save_every=50))
    eval: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(reward=None, num_samples=200))
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    critic: CriticConfig = dataclasses.field(default_factory=CriticConfig)
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    # Data-parallel ranks: `distributed.world_size: 2` spawns two (gloo on CPU); torchrun works too.
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    steps: int = 100
    # Sequences per forward/backward pass; a step's prompts_per_step × samples_per_prompt
    # sequences (each rank's share of them, over several ranks) are split into micro-batches of
    # this size (gradient accumulation in between).
    micro_batch_size: int = 64
    # Optimizer steps per rollout batch (PPO epochs); old log-probs are computed once per batch.
    updates_per_batch: int = 1
    # fp32, bf16-mixed (bf16 autocast over float32 weights and optimizer state, the rollout engine
    # included) or auto (bf16-mixed on CUDA, and on a CPU only where bf16 matmuls measure fast):
    # posttrain/training/precision.py.
    precision: PrecisionName = "fp32"

    def check_world_size(self, world: int) -> None:
        """What `world` data-parallel ranks need: whole prompts per rank, micro-batches that divide
        each rank's sequences, a loop that runs on several ranks (the critic-free one), and Ray
        workers that split evenly over the ranks."""
        r = self.rollout
        sequences = r.prompts_per_step * r.samples_per_prompt
        if world == 1:
            require(sequences % self.micro_batch_size == 0,
                    f"rollout.prompts_per_step × rollout.samples_per_prompt ({r.prompts_per_step} × "
                    f"{r.samples_per_prompt} = {sequences} sequences) must be a multiple of micro_batch_size "
                    f"({self.micro_batch_size})")
            return
        require(r.prompts_per_step % world == 0,
                f"rollout.prompts_per_step ({r.prompts_per_step}) must be a multiple of the world size ({world}): "
                "each rank samples whole prompts")
        per_rank = sequences // world
        require(per_rank % self.micro_batch_size == 0,
                f"each of the {world} ranks trains on {r.prompts_per_step // world} prompts × {r.samples_per_prompt} "
                f"samples = {per_rank} sequences, which must be a multiple of micro_batch_size ({self.micro_batch_size})")
        require(not self.needs_critic(), f"algorithm {self.algorithm.name!r} (a critic) runs in one process for now: "
                "distributed.world_size > 1 supports the critic-free loop (grpo, dr_grpo, dapo, rloo, reinforce_pp, gspo)")
        require(r.engine != "ray" or r.workers % world == 0,
                f"rollout.engine=ray on {world} ranks: rollout.workers ({r.workers}) must be a multiple of the world "
                f"size ({world}); each rank samples its prompts with rollout.workers / {world} Ray workers of its own")

    def check_importance_correction(self) -> None:
        """`rollout.importance_*`: a cap >= 1, and a correction only where there is a mismatch to correct."""
        r = self.rollout
        require(not isinstance(r.importance_cap, bool) and isinstance(r.importance_cap, (int, float))
                and 1 <= r.importance_cap < 1e8, f"rollout.importance_cap must be a number >= 1 (a cap below 1 "
                f"would shrink even tokens where sampler and trainer agree), got {r.importance_cap!r}")
        if r.importance_correction == "none":
            return
        require(r.engine != "hf", f"rollout.importance_correction={r.importance_correction} corrects the gap "
                "between a separate sampler and the trainer, but rollout.engine=hf samples from the trained module "
                "itself (there is no gap): set rollout.importance_correction=none, or use rollout.engine=vllm or ray")
        require(not self.needs_critic(), f"rollout.importance_correction={r.importance_correction} is implemented by "
                f"the critic-free loop (grpo, dr_grpo, dapo, rloo, reinforce_pp, gspo), not by {self.algorithm.name!r} "
                "(a critic): set rollout.importance_correction=none")

    def needs_critic(self) -> bool:
        """True when the algorithm's advantage needs a value model (ppo): `rl.train` then runs `recipes/rl/ppo.py`."""
        return self.algorithm.resolve().advantage in CRITIC_ESTIMATORS

    def validate(self) -> None:
        r = self.rollout
        require(self.steps > 0, f"steps must be > 0, got {self.steps}")
        require(r.prompts_per_step > 0, "rollout.prompts_per_step must be > 0")
        require(r.samples_per_prompt >= 1, "rollout.samples_per_prompt must be >= 1")
        require(r.max_new_tokens > 0, "rollout.max_new_tokens must be > 0")
        require(r.log_samples >= 0, f"rollout.log_samples must be >= 0, got {r.log_samples}")
        require(r.temperature > 0, "rollout.temperature must be > 0 for RL (the policy gradient needs sampling)")
        require(not isinstance(r.workers, bool) and isinstance(r.workers, int) and r.workers >= 1,
                f"rollout.workers must be an int >= 1, got {r.workers!r}")
        require(not isinstance(r.worker_timeout_s, bool) and isinstance(r.worker_timeout_s, (int, float))
                and r.worker_timeout_s > 0, f"rollout.worker_timeout_s must be a number of seconds > 0, "
                f"got {r.worker_timeout_s!r}")
        require(self.micro_batch_size > 0, "micro_batch_size must be > 0")
        require(self.updates_per_batch >= 1, "updates_per_batch must be >= 1")
        self.env.validate()
        require(self.reward.missing_eos_penalty is None or self.reward.missing_eos_penalty >= 0,
                f"reward.missing_eos_penalty must be >= 0 (it is subtracted), got {self.reward.missing_eos_penalty}")
        require(bool(self.reward.functions), "reward.functions must name at least one reward")
        require(self.reward.weights is None or len(self.reward.weights) == len(self.reward.functions),
                f"reward.weights has {len(self.reward.weights or [])} entries for "
                f"{len(self.reward.functions)} reward.functions")
        require(not self.reward.turn_functions or self.env.name is not None,
                "reward.turn_functions score the turns of multi-turn episodes: set env.name (or drop them)")
        require(self.reward.turn_weights is None or len(self.reward.turn_weights) == len(self.reward.turn_functions),
                f"reward.turn_weights has {len(self.reward.turn_weights or [])} entries for "
                f"{len(self.reward.turn_functions)} reward.turn_functions")
        try:
            algo = self.algorithm.resolve()
        except (ValueError, TypeError) as err:
            require(False, f"algorithm: {err}")
        group_estimators = {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}
        require(algo.advantage not in group_estimators or r.samples_per_prompt >= 2,
                f"algorithm {self.algorithm.name!r} uses a group baseline ({algo.advantage}): "
                f"rollout.samples_per_prompt must be >= 2, got {r.samples_per_prompt}")
        if algo.advantage in CRITIC_ESTIMATORS:
            require(algo.kl_placement == "reward",
                    f"algorithm {self.algorithm.name!r} (a critic with {algo.advantage}) puts the KL penalty in "
                    f"the reward; kl_placement must be 'reward', got {algo.kl_placement!r}")
            require(0 <= algo.gamma <= 1 and 0 <= algo.lam <= 1,
                    f"algorithm.gamma and algorithm.lam must lie in [0, 1], got {algo.gamma} and {algo.lam}")
            require(self.critic.vf_coef > 0, f"critic.vf_coef must be > 0, got {self.critic.vf_coef}")
            require(self.critic.value_clip is None or self.critic.value_clip > 0,
                    f"critic.value_clip must be > 0 or null, got {self.critic.value_clip}")
            require(bool(self.critic.init.strip()), "critic.init must be 'policy' or a reward-model directory")
        require(algo.kl_target is None or (algo.kl_target > 0 and algo.kl_coef > 0),
                f"algorithm.kl_target (adaptive KL) must be > 0 and start from kl_coef > 0, got "
                f"kl_target={algo.kl_target}, kl_coef={algo.kl_coef}")
        require(algo.kl_target is None or algo.advantage in CRITIC_ESTIMATORS,
                f"algorithm.kl_target (adaptive KL) is implemented by the critic loop only (ppo), not by "
                f"{self.algorithm.name!r}")
        require(algo.kl_horizon > 0, f"algorithm.kl_horizon must be > 0, got {algo.kl_horizon}")
        require(algo.loss_normaliser is None or isinstance(algo.loss_normaliser, float)
                or algo.loss_normaliser == "max_new_tokens",
                f"algorithm.loss_normaliser must be a number or 'max_new_tokens', got {algo.loss_normaliser!r}")
        self.check_importance_correction()
        from posttrain.training.distributed import world_size  # the launcher's (torchrun) or distributed.world_size

        self.check_world_size(world_size(self.distributed))
