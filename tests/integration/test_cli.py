"""The command line as a user meets it: help, tiny-model, make-data, config, and error exits."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.recipes.sft import SFTConfig


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("sft", "rl", "demo", "tiny-model", "make-data", "config"):
        assert command in out


def test_tiny_model_command_writes_a_loadable_model(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "m"), "--arch", "llama"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "llama"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_make_data_writes_rows_the_sft_loader_accepts(tmp_path):
    out = tmp_path / "sft.jsonl"
    assert main(["make-data", "arithmetic", str(out), "--n", "20", "--max-operand", "9"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["messages"][-1]["role"] == "assistant"


def test_config_command_prints_defaults_that_load_back(tmp_path, capsys):
    assert main(["config", "sft"]) == 0
    path = tmp_path / "sft.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(SFTConfig, path).steps == SFTConfig().steps


def test_config_errors_exit_2_and_name_the_key(capsys):
    assert main(["sft", "optim.lrr=3"]) == 2
    assert "'optim.lrr'" in capsys.readouterr().err


def test_data_errors_exit_1_and_name_file_row_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}\n'
                   '{"prompt": "2+2="}\n')
    code = main(["sft", f"data.train={bad}", f"run.output_dir={tmp_path}", "steps=1", "model.device=cpu",
                 "run.report_to=[]"])
    err = capsys.readouterr().err
    assert code == 1
    assert "bad.jsonl, line 2" in err and "'completion'" in err


@pytest.mark.integration  # trains two steps
def test_resolved_config_is_printed_and_saved(tmp_path, capsys):
    code = main(["sft", f"run.output_dir={tmp_path}", "run.name=tiny", "steps=2", "sequences_per_step=4",
                 "micro_batch_size=2", "data.arithmetic.num_train=16", "data.arithmetic.num_eval=4",
                 "model.device=cpu", "run.report_to=[]", "data.max_length=32"])
    assert code == 0
    out = capsys.readouterr().out
    assert "# posttrain sft: resolved config" in out and "micro_batch_size: 2" in out
    saved = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())
    assert saved["micro_batch_size"] == 2 and saved["run"]["name"] == "tiny"


def test_make_data_spreadsheet_writes_expert_conversations_the_sft_loader_accepts(tmp_path, capsys):
    from posttrain.data.examples import load_examples

    assert main(["make-data", "spreadsheet", str(tmp_path / "sft.jsonl"), "--n", "3"]) == 0
    (tmp_path / "sft.jsonl").read_text()
    loaded = load_examples(str(tmp_path / "sft.jsonl"), "sft")
    assert len(loaded.examples) == 3 and loaded.examples[0].tools[-1]["function"]["name"] == "answer"
    assert main(["make-data", "spreadsheet", str(tmp_path / "tasks.jsonl"), "--n", "2", "--shape", "prompts"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"file", "question", "answer"} <= set(r) for r in rows)
    assert "wrote 2 spreadsheet prompts rows" in capsys.readouterr().out
