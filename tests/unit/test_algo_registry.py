"""Registry lookups, plug-in registration, the common advantage interface, and presets."""

import pytest
import torch
from torch.testing import assert_close

from posttrain.algorithms import advantages as adv
from posttrain.algorithms.aggregation import aggregate
from posttrain.algorithms.kl import kl_estimate
from posttrain.algorithms.policy_loss import ppo_clip_loss
from posttrain.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    ALGORITHM_PRESETS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    AdvantageInputs,
    AdvantageOutput,
    get_advantage_estimator,
    get_aggregation,
    get_kl_estimator,
    get_policy_loss,
    get_preset,
    register_advantage_estimator,
    register_aggregation,
    register_kl_estimator,
)


def test_builtin_names():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"}
    assert set(POLICY_LOSSES) == {"ppo_clip", "gspo"}
    assert set(KL_ESTIMATORS) >= {"k1", "k2", "k3"}
    assert set(AGGREGATIONS) >= {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
    assert get_policy_loss("ppo_clip") is ppo_clip_loss


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'grpoo'; valid names: \['dr_grpo', 'gae'"):
        get_advantage_estimator("grpoo")
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'.*'gspo', 'ppo_clip'"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match=r"unknown KL estimator 'kl'"):
        get_kl_estimator("kl")
    with pytest.raises(ValueError, match=r"unknown aggregation 'sum'"):
        get_aggregation("sum")
    with pytest.raises(ValueError, match=r"unknown algorithm 'ppo2'.*'dapo'"):
        get_preset("ppo2")


def test_import_paths_resolve_and_fail_clearly():
    assert get_policy_loss("posttrain.algorithms.policy_loss:ppo_clip_loss") is ppo_clip_loss
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.mod'"):
        get_policy_loss("no_such_pkg.mod:fn")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        get_advantage_estimator("posttrain.algorithms.advantages:nope")
    with pytest.raises(ValueError, match="is not callable"):
        get_kl_estimator("posttrain.algorithms.kl:K3_MAX_LOG_RATIO")
    with pytest.raises(ValueError, match="must look like 'pkg.module:function'"):
        get_aggregation("posttrain.algorithms.aggregation:")


def test_register_plugins_and_use_them_by_name():
    try:

        @register_advantage_estimator("raw_reward")
        def raw_reward(inputs: AdvantageInputs) -> AdvantageOutput:
            return AdvantageOutput(inputs.rewards[:, None].expand_as(inputs.mask).float() * inputs.mask)

        @register_kl_estimator("abs_diff")
        def abs_diff(logp, ref_logp):
            return (logp - ref_logp).abs()

        @register_aggregation("token-sum")
        def token_sum(loss, mask, **_):
            return (loss * mask).sum()

        inputs = AdvantageInputs(torch.tensor([2.0, 3.0]), torch.tensor([[1, 0], [1, 1]]))
        out = get_advantage_estimator("raw_reward")(inputs)
        assert_close(out.advantages, torch.tensor([[2.0, 0.0], [3.0, 3.0]]))
        # registered names also work through the plain entry points
        assert_close(kl_estimate(torch.tensor([[-1.0]]), torch.tensor([[-3.0]]), "abs_diff"), torch.tensor([[2.0]]))
        assert_close(aggregate(torch.tensor([[1.0, 2.0]]), torch.ones(1, 2), "token-sum"), torch.tensor(3.0))

        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("raw_reward")(raw_reward)
        register_advantage_estimator("raw_reward", overwrite=True)(raw_reward)  # explicit replacement is fine
        with pytest.raises(ValueError, match="without ':'"):
            register_advantage_estimator("a:b")
    finally:
        ADVANTAGE_ESTIMATORS.pop("raw_reward", None)
        KL_ESTIMATORS.pop("abs_diff", None)
        AGGREGATIONS.pop("token-sum", None)


def test_grpo_adapter_broadcasts_over_valid_tokens():
    """rewards [1, 0, 0, 1], G = 4 ⇒ ±0.8660254 (see test_algo_advantages), 0 on padding."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    out = get_advantage_estimator("grpo")(AdvantageInputs(torch.tensor([1.0, 0.0, 0.0, 1.0]), mask, group_size=4))
    a = 0.8660254
    expected = torch.tensor([[a, a, 0], [-a, 0, 0], [-a, -a, -a], [a, a, 0]])
    assert_close(out.advantages, expected, atol=2e-6, rtol=0)
    assert out.returns is None


def test_rloo_adapter_folds_kl_into_the_sequence_reward():
    """β = 0.5: r'_0 = 1 − 0.5·(0.2 + 0.2) = 0.8, r'_1 = 0 − 0.5·0.1 = −0.05 (padding KL 99 ignored);
    RLOO with G = 2: A_0 = 0.8 − (−0.05) = 0.85, A_1 = −0.85."""
    mask = torch.tensor([[1, 1], [1, 0]])
    kl = torch.tensor([[0.2, 0.2], [0.1, 99.0]])
    inputs = AdvantageInputs(torch.tensor([1.0, 0.0]), mask, group_size=2, kl=kl, kl_coef=0.5)
    out = get_advantage_estimator("rloo")(inputs)
    assert_close(out.advantages, torch.tensor([[0.85, 0.85], [-0.85, 0.0]]))


def test_token_level_adapters_match_the_plain_functions():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0])
    kl = torch.rand(4, 4) * 0.1
    values = torch.rand(4, 4)
    inputs = AdvantageInputs(rewards, mask, group_size=2, values=values, kl=kl, kl_coef=0.2, gamma=0.99, lam=0.9)

    out = get_advantage_estimator("reinforce_pp")(inputs)
    assert_close(out.advantages, adv.reinforce_pp_advantages(rewards, mask, kl=kl, kl_coef=0.2, gamma=0.99))
    out = get_advantage_estimator("reinforce_pp_baseline")(inputs)
    assert_close(out.advantages, adv.reinforce_pp_baseline_advantages(rewards, mask, 2, kl=kl, kl_coef=0.2, gamma=0.99))

    out = get_advantage_estimator("gae")(inputs)
    token_rewards = adv.sequence_to_token_rewards(rewards, mask, kl, 0.2)
    raw, returns = adv.gae(token_rewards, values, mask, 0.99, 0.9)
    assert_close(out.advantages, adv.whiten(raw, mask))
    assert_close(out.returns, returns)

    with pytest.raises(ValueError, match="'gae' needs values"):
        get_advantage_estimator("gae")(AdvantageInputs(rewards, mask))


def test_presets_name_registered_functions_and_match_the_papers():
    for name, preset in ALGORITHM_PRESETS.items():
        get_advantage_estimator(preset.advantage)
        get_policy_loss(preset.policy_loss)
        get_aggregation(preset.aggregation)
        get_kl_estimator(preset.kl_estimator)
        assert preset.eps_high >= preset.eps_low, name
        assert preset.paper, name
        if preset.aggregation == "seq-mean-token-sum-norm":
            assert preset.loss_normaliser is not None, name
    dapo = get_preset("dapo")
    assert (dapo.eps_low, dapo.eps_high, dapo.aggregation, dapo.kl_coef) == (0.2, 0.28, "token-mean", 0.0)
    assert dapo.dynamic_sampling and dapo.overlong_cache_fraction == pytest.approx(4096 / 20480)
    assert (get_preset("gspo").eps_low, get_preset("gspo").eps_high) == (3e-4, 4e-4)
    assert get_preset("grpo").kl_coef == 0.04 and get_preset("grpo").kl_estimator == "k3"
    assert get_preset("dr_grpo").loss_normaliser == "max_new_tokens"
    assert {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "gspo"} <= set(ALGORITHM_PRESETS)
