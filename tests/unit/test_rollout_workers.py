"""`rollout.workers` / `rollout.worker_timeout_s`: validated with the field named, and passed by the
engine factory only to engines that take them (no Ray needed here)."""

import pytest
from torch import nn

from posttrain.config import ConfigError, load_config
from posttrain.engines import factory
from posttrain.recipes import rl


def test_the_defaults_are_one_worker_and_a_finite_timeout():
    cfg = load_config(rl.RLConfig, None, [])
    assert cfg.rollout.workers == 1 and cfg.rollout.worker_timeout_s > 0
    assert load_config(rl.RLConfig, None, ["rollout.engine=ray", "rollout.workers=3"]).rollout.workers == 3


@pytest.mark.parametrize("override, field", [
    ("rollout.workers=0", "rollout.workers must be an int >= 1, got 0"),
    ("rollout.worker_timeout_s=0", "rollout.worker_timeout_s must be a number of seconds > 0, got 0"),
    ("rollout.worker_timeout_s=-5", "rollout.worker_timeout_s must be a number of seconds > 0"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(rl.RLConfig, None, [override])


def test_the_factory_passes_workers_and_timeout_only_to_engines_that_take_them(monkeypatch):
    seen = {}

    def many(model, tokenizer, *, workers=1, timeout_s=1.0):
        seen.update(workers=workers, timeout_s=timeout_s)
        return "engine"

    monkeypatch.setitem(factory.ENGINES, "many", many)
    monkeypatch.setitem(factory.ENGINES, "plain", lambda model, tokenizer: "plain")
    assert factory.build_engine("many", nn.Linear(1, 1), None, workers=2, timeout_s=9.0) == "engine"
    assert seen == {"workers": 2, "timeout_s": 9.0}
    assert factory.build_engine("plain", nn.Linear(1, 1), None, timeout_s=9.0) == "plain"
    with pytest.raises(ValueError, match=r"rollout.workers=2: rollout engine 'hf' runs one replica"):
        factory.build_engine("hf", nn.Linear(1, 1), None, workers=2)
    assert "ray" in factory.ENGINES
