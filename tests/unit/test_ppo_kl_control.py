"""Fixed and adaptive KL controllers (Ziegler et al. 2019), worked by hand."""

import pytest

from posttrain.algorithms.kl_control import (
    AdaptiveKLController, FixedKLController, adaptive_kl_coef, build_kl_controller,
)


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    assert ctl.update(observed_kl=100.0, n_steps=64) == 0.05 and ctl.value == 0.05


@pytest.mark.parametrize("observed, expected", [
    # β = 0.1, target 6, horizon 10 000, 64 samples: K_β = 64 / 10 000 = 0.0064.
    (9.0, 0.1 * (1 + 0.2 * 0.0064)),    # 9/6 − 1 = 0.5, clipped to +0.2
    (6.6, 0.1 * (1 + 0.1 * 0.0064)),    # 6.6/6 − 1 = 0.1, inside the clip
    (6.0, 0.1),                          # on target: no change
    (5.4, 0.1 * (1 - 0.1 * 0.0064)),    # 5.4/6 − 1 = −0.1
    (0.0, 0.1 * (1 - 0.2 * 0.0064)),    # −1 clipped to −0.2
])
def test_adaptive_update_hand_values(observed, expected):
    assert adaptive_kl_coef(0.1, observed, target=6.0, horizon=10_000, n_steps=64) == pytest.approx(expected)


def test_adaptive_controller_compounds_and_restores_its_state():
    """Horizon = batch size makes K_β = 1: KL 1.1 against target 1 → ×1.1, twice → ×1.21;
    then KL 0.5 (error −0.5, clipped to −0.2) → ×0.8: 1.21 · 0.8 = 0.968."""
    ctl = build_kl_controller(1.0, target=1.0, horizon=10)
    assert isinstance(ctl, AdaptiveKLController)
    ctl.update(1.1, n_steps=10)
    assert ctl.update(1.1, n_steps=10) == pytest.approx(1.21)
    assert ctl.update(0.5, n_steps=10) == pytest.approx(0.968)
    resumed = build_kl_controller(1.0, target=1.0, horizon=10)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == pytest.approx(0.968)


def test_builder_and_bad_settings():
    assert isinstance(build_kl_controller(0.05), FixedKLController)
    with pytest.raises(ValueError, match="kl_coef > 0"):
        build_kl_controller(0.0, target=6.0)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0)
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        build_kl_controller(-0.1)
