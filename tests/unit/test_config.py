"""Config loading: YAML + dotted overrides, strict keys and types, batch-size checks."""

import dataclasses

import pytest

from posttrain.config import ConfigError, load_config, to_dict
from posttrain.recipes.sft import SFTConfig


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(SFTConfig)
    assert cfg.model.name_or_path == "tiny"
    assert cfg.sequences_per_step % cfg.micro_batch_size == 0


def test_yaml_then_overrides_win(tmp_path):
    path = write(tmp_path, "steps: 10\noptim:\n  lr: 0.01\nrun:\n  name: from-file\n")
    cfg = load_config(SFTConfig, path, ["optim.lr=3e-4", "run.name=cli", "data.arithmetic.ops=[+, '-']"])
    assert cfg.steps == 10
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.run.name == "cli"
    assert cfg.data.arithmetic.ops == ["+", "-"]


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 parses "1e-3" as a string; a float field must still accept it.
    cfg = load_config(SFTConfig, write(tmp_path, "optim:\n  lr: 1e-3\n"))
    assert cfg.optim.lr == pytest.approx(1e-3)


def test_unknown_key_names_the_dotted_key_and_file(tmp_path):
    path = write(tmp_path, "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    assert "'optim.learning_rate'" in str(err.value)
    assert str(path) in str(err.value)
    assert "lr" in str(err.value)  # the valid keys are listed


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="'run.nmae'"):
        load_config(SFTConfig, None, ["run.nmae=x"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=ten", "'steps' must be an integer"),
        ("optim.lr=fast", "'optim.lr' must be a number"),
        ("run.resume=maybe", "'run.resume' must be true or false"),
        ("data.on_bad_row=ignore", "'data.on_bad_row' must be one of"),
        ("optim.betas=0.9", "'optim.betas' must be a list"),
        ("model=3", "'model' must be a mapping"),
    ],
)
def test_wrong_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, None, [override])


def test_batch_sizes_must_divide():
    with pytest.raises(ConfigError, match=r"sequences_per_step \(30\) must be a multiple of micro_batch_size \(8\)"):
        load_config(SFTConfig, None, ["sequences_per_step=30", "micro_batch_size=8"])


def test_optional_section_can_be_enabled_and_disabled():
    cfg = load_config(SFTConfig, None, ["model.lora.r=4"])
    assert cfg.model.lora is not None and cfg.model.lora.r == 4 and cfg.model.lora.alpha == 16
    assert load_config(SFTConfig, None, ["model.lora=null"]).model.lora is None


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(SFTConfig, None, ["=3"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SFTConfig, write(tmp_path, "- 1\n- 2\n"))


def test_resolved_config_round_trips_through_to_dict(tmp_path):
    import yaml

    cfg = load_config(SFTConfig, None, ["steps=7", "model.lora.r=2"])
    path = write(tmp_path, yaml.safe_dump(to_dict(cfg)))
    again = load_config(SFTConfig, path)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_overriding_one_key_of_a_section_keeps_the_recipes_defaults_for_the_others():
    # SFTConfig names its run section "sft"; setting run.seed must not reset the name to RunConfig's default.
    cfg = load_config(SFTConfig, None, ["run.seed=3"])
    assert cfg.run.seed == 3 and cfg.run.name == "sft"
