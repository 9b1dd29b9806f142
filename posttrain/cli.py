"""Command line: `posttrain <command> [config.yaml] [key=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import yaml

from posttrain import __version__
from posttrain.config import ConfigError, load_config, to_dict

# command -> (module, config class name, entry function name, one-line help). Imported lazily so
# `posttrain --help` answers without importing torch.
RECIPES: dict[str, tuple[str, str, str, str]] = {
    "sft": ("posttrain.recipes.sft", "SFTConfig", "train", "supervised fine-tuning on chat or completion data"),
    "rl": ("posttrain.recipes.rl", "RLConfig", "train",
           "RL: grpo, dr_grpo, dapo, rloo, reinforce_pp, gspo with verifiable rewards; ppo with a reward model"),
    "pivotrl": ("posttrain.recipes.pivotrl", "PivotRLConfig", "train",
                "PivotRL: profile expert turns with the policy, RL on the pivotal ones only (env.name: spreadsheet)"),
    "dpo": ("posttrain.recipes.preference.dpo", "DPOConfig", "train",
            "preference alignment without a reward model: dpo, ipo, cdpo, simpo, orpo, kto"),
    "reward-model": ("posttrain.recipes.preference.reward_model", "RewardModelConfig", "train",
                     "Bradley-Terry reward model: a scalar head on a causal LM, trained on preference pairs"),
    "eval": ("posttrain.recipes.scaling_eval", "ScalingEvalConfig", "run_eval",
             "evaluate a model with n samples per prompt: greedy, pass@k, pass^k, maj@k, best-of-N, with intervals"),
    "demo": ("posttrain.recipes.demo", "DemoConfig", "run_demo",
             "the end-to-end demo on the built-in tiny model and arithmetic task"),
}


def _recipe(command: str) -> tuple[type, Callable]:
    import importlib

    module_name, config_name, entry_name, _ = RECIPES[command]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, entry_name)


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    config_path = None
    overrides = []
    for arg in args:
        if "=" in arg:
            overrides.append(arg)
        elif config_path is None and arg.endswith((".yaml", ".yml")):
            config_path = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}: give one config .yaml file and key=value overrides")
    return config_path, overrides


def _run_recipe(command: str, args: list[str]) -> int:
    config_cls, entry = _recipe(command)
    config_path, overrides = _split_config_args(args)
    config = load_config(config_cls, config_path, overrides)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank reads the config; rank 0 prints it
        print(f"# posttrain {command}: resolved config")
        print(yaml.safe_dump(to_dict(config), sort_keys=False).rstrip())
    entry(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posttrain",
        description="Post-train language models: SFT, preference alignment, RL with verifiable rewards.",
        epilog="Recipe commands take an optional config.yaml and dotted overrides, "
               "e.g. `posttrain sft examples/sft_arithmetic.yaml optim.lr=3e-4 run.name=try2`.",
    )
    parser.add_argument("--version", action="version", version=f"posttrain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, _, _, help_text) in RECIPES.items():
        recipe = sub.add_parser(name, help=help_text, description=help_text)
        recipe.add_argument("args", nargs="*", metavar="[config.yaml] [key=value ...]")

    show = sub.add_parser("config", help="print a recipe's default config as YAML (a starting point for a file)")
    show.add_argument("recipe", choices=sorted(RECIPES))

    tiny = sub.add_parser("tiny-model", help="build the offline tiny model + tokenizer into a directory")
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    tiny.add_argument("--preset", default="tiny", help="tiny (~1-2M params), agent (tiny with a 2k context) or small (~10-30M)")
    tiny.add_argument("--seed", type=int, default=0)

    report = sub.add_parser("report", help="write one self-contained HTML page about a run directory: curves, "
                                           "evaluation, compute ledger, sample rollouts, config")
    report.add_argument("run_dir", type=Path, help="a run directory of any recipe, or one holding stage runs (demo)")
    report.add_argument("--out", type=Path, default=None, help="the page to write (default RUN_DIR/report.html)")
    report.add_argument("--eval", dest="evals", type=Path, action="append", default=[], metavar="DIR",
                        help="a `posttrain eval` output (its directory or eval.json) to show too; repeatable")
    report.add_argument("--screenshot", type=Path, default=None, metavar="PNG",
                        help="also render the page with headless Chromium to this PNG")

    data = sub.add_parser("make-data", help="write a built-in task as JSONL (arithmetic; spreadsheet with its workbooks)")
    data.add_argument("task", choices=["arithmetic", "spreadsheet"])
    data.add_argument("out", type=Path)
    data.add_argument("--n", type=int, default=1000)
    data.add_argument("--split", default="train", choices=["train", "test"])
    data.add_argument("--shape", default="sft", choices=["sft", "prompts", "preference"],
                      help="sft: chat messages with the answer; prompts: prompt + answer columns (RL/eval); "
                           "preference: prompt, chosen (correct) and rejected (near-miss) answers")
    data.add_argument("--max-operand", type=int, default=99)
    data.add_argument("--difficulty", default="easy", choices=["easy", "medium", "hard"],
                      help="spreadsheet: workbook and question difficulty (the workbooks go beside OUT)")
    data.add_argument("--seed", type=int, default=0)
    return parser


def _make_spreadsheet_data(ns) -> int:
    """Spreadsheet tasks (prompts: the user task format) or the scripted expert's conversations on
    them (sft), with the workbooks in `<OUT stem>-tasks/` beside OUT."""
    from types import SimpleNamespace

    from posttrain.data.jsonl import write_jsonl
    from posttrain.envs.registry import environment_spec

    if ns.shape == "preference":
        raise ValueError("make-data spreadsheet writes --shape sft (expert conversations) or prompts (tasks)")
    task_dir = ns.out.parent / f"{ns.out.stem}-tasks"
    spec = environment_spec(SimpleNamespace(name="spreadsheet", parser="hermes", tool_timeout_s=10.0, options={
        "num_train": ns.n, "num_eval": ns.n, "difficulty": ns.difficulty, "task_dir": str(task_dir)}))
    rows = spec.rows("builtin:spreadsheet", ns.split, ns.seed)
    if ns.shape == "sft":
        rows = [{"messages": r["messages"], "tools": r["tools"]} for r in spec.expert_rows(rows)]
    else:
        rows = [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
    write_jsonl(rows, ns.out)
    print(f"wrote {len(rows)} spreadsheet {ns.shape} rows to {ns.out} (workbooks under {task_dir})")
    return 0


def _report(ns) -> int:
    """`posttrain report`: the page, the problems met (each naming its file), the screenshot."""
    from posttrain.report import screenshot, write_report

    path, problems = write_report(ns.run_dir, ns.out, ns.evals)
    for message in problems:
        print(f"posttrain report: warning: {message}", file=sys.stderr)
    print(f"report: {path}")
    if ns.screenshot is not None:
        png, whole = screenshot(path, ns.screenshot)
        print(f"screenshot: {png}" + ("" if whole else " (the page is longer than the window: cut at the bottom)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Recipes print their own progress; transformers' per-file load/save bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.command is None:
            parser.print_help()
            return 0
        if ns.command in RECIPES:
            return _run_recipe(ns.command, ns.args)
        if ns.command == "config":
            config_cls, _ = _recipe(ns.recipe)
            print(yaml.safe_dump(to_dict(config_cls()), sort_keys=False).rstrip())
            return 0
        if ns.command == "tiny-model":
            from posttrain.models.tiny import build_tiny_model

            out = build_tiny_model(ns.out_dir, arch=ns.arch, preset=ns.preset, seed=ns.seed)
            print(f"tiny {ns.arch} model ({ns.preset}) written to {out}")
            return 0
        if ns.command == "report":
            return _report(ns)
        if ns.command == "make-data" and ns.task == "spreadsheet":
            return _make_spreadsheet_data(ns)
        if ns.command == "make-data":
            from posttrain.data.jsonl import write_jsonl
            from posttrain.envs.arithmetic import ArithmeticTask, preference_rows, sft_rows

            problems = ArithmeticTask(max_operand=ns.max_operand).problems(ns.n, seed=ns.seed, split=ns.split)
            shaped = {"sft": lambda: sft_rows(problems), "prompts": lambda: problems,
                      "preference": lambda: preference_rows(problems, seed=ns.seed)}
            rows = shaped[ns.shape]()
            write_jsonl(rows, ns.out)
            print(f"wrote {len(rows)} {ns.shape} rows to {ns.out}")
            return 0
    except ConfigError as err:
        print(f"posttrain: config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as err:
        # Data errors (file, row, field), runs that would clobber another, NaN losses: the message
        # says what to do; the traceback only buries it. POSTTRAIN_DEBUG=1 shows it anyway.
        if os.environ.get("POSTTRAIN_DEBUG"):
            raise
        print(f"posttrain: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
