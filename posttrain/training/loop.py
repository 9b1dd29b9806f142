"""The training-loop skeleton every recipe shares, written once.

A recipe reads top to bottom around it::

    run = start_run(cfg)                          # run directory, config snapshot, metrics, TensorBoard
    with run:
        set_seed(cfg.run.seed)
        ...models, data, optimizer, scheduler, ledger...       (what is specific to the method)
        loop = TrainingLoop(run, cfg.run, cfg.steps, model=..., optimizer=..., scheduler=...,
                            ledger=..., tokenizer=..., evaluate=evaluate)
        loop.resume()                             # checkpoint → weights, optimizer, RNG, ledger
        loop.train(train_step, description=..., postfix=...)  # eval at 0, steps, log / eval / checkpoint
        return loop.finish({...recipe fields...}, plot_keys=[...], plot_name=..., title=...)

`train_step(step) -> metrics` is the method itself (one optimizer step, or one RL iteration);
everything around it — when to log, evaluate and checkpoint, the progress bar, the final save,
plot and summary — lives here, so five recipes cannot drift apart again.

Data parallel (`training/distributed.py`): every rank runs the loop and resumes from the same
checkpoint; only the rank whose run `is_main` (rank 0) evaluates, logs, checkpoints, saves,
plots and writes the summary.
"""

from __future__ import annotations

import random
import time
from functools import partial
from typing import Callable

import numpy as np
import torch

from posttrain.checkpoint import load_checkpoint, save_checkpoint
from posttrain.compute import ComputeLedger
from posttrain.config import RunConfig, to_dict
from posttrain.models.loading import save_model
from posttrain.plots import plot_metrics
from posttrain.run import Run
from posttrain.training.distributed import Ranks, save_gathered, share_run
from posttrain.training.precision import recipe_precision


def logged_step(done: int, log_every: int, steps: int) -> bool:
    """Whether `TrainingLoop.train` logs the metrics after `done` steps: every `log_every`, and the last."""
    return done % log_every == 0 or done == steps


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warn_to(run: Run) -> Callable[[str], None]:
    """A `warn` callback printing to the run's console (no rich markup: tracebacks hold brackets)."""
    return lambda message: run.console.print(f"warning: {message}", markup=False, style="yellow")


def start_run(cfg, extra_config: dict | None = None, ranks: Ranks = Ranks()) -> Run:
    """Create (or resume) the run directory a recipe config's `run` section names; the saved
    config is the whole recipe config plus `extra_config` (e.g. the resolved algorithm).
    Over several `ranks` rank 0 does so and the others get a `FollowerRun` of it.

    A config with a `precision` key has it resolved here, for every recipe alike: a bad
    combination stops the run before its directory exists, the choice and its reason are
    printed, and the snapshot records them as `resolved_precision`."""
    r: RunConfig = cfg.run
    precision = recipe_precision(cfg) if hasattr(cfg, "precision") else None
    resolved = {"resolved_precision": precision.as_dict()} if precision is not None else {}
    run = share_run(ranks, lambda: Run.start(
        r.output_dir, r.name, {**to_dict(cfg), **resolved, **(extra_config or {})}, resume=r.resume,
        overwrite=r.overwrite, report_to=r.report_to, wandb_project=r.wandb_project))
    if precision is not None:
        run.print(precision.describe(), markup=False)
    return run


class TrainingLoop:
    """Resume, evaluate, step, log, checkpoint, save, plot and summarise — for any recipe.

    Args:
        run: the run directory.
        run_cfg: its config section (log / eval / save cadence, checkpoints kept).
        steps: optimizer steps (RL: iterations) of the whole run.
        model: what the optimizer trains and a checkpoint holds (PPO: policy and critic together).
        optimizer, scheduler, ledger, tokenizer: saved with each checkpoint.
        evaluate: held-out metrics of the current weights; run at step 0, every `eval_every`
            steps and at the end, timed as the ledger's "eval" stage and logged.
        extra_state: recipe state (JSON-serialisable) saved with each checkpoint, e.g. PPO's
            adaptive KL coefficient; `resume(on_state=...)` gets it back.
        ranks: the data-parallel ranks (`training.distributed.Ranks`; default: one process).
            Each rank's ledger counts its own share; what is logged, checkpointed and summarised
            is the run's over every rank (`ComputeLedger.merged`: tokens and FLOPs summed, a
            stage's seconds the slowest rank's). A checkpoint holds those run totals, so on
            resume rank 0 takes them and the other ranks start their shares from zero.
    """

    def __init__(self, run: Run, run_cfg: RunConfig, steps: int, *, model: torch.nn.Module, optimizer, scheduler,
                 ledger: ComputeLedger, tokenizer, evaluate: Callable[[], dict],
                 extra_state: Callable[[], dict] | None = None, ranks: Ranks | None = None) -> None:

        self.run = run
        self.run_cfg = run_cfg
        self.steps = steps
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ledger = ledger
        self.tokenizer = tokenizer
        self._evaluate_fn = evaluate
        self._extra_state = extra_state
        self.ranks = ranks if ranks is not None else Ranks()
        self.start_step = 0
        self.first_eval: dict = {}
        self.final_eval: dict = {}

    def resume(self, on_state: Callable[[dict], None] | None = None) -> int:
        """Restore the run's checkpoint when it resumes; returns the step to start from (0 when fresh).

        The first evaluation travels in the checkpoint, so a resumed run still reports accuracy
        before and after. `on_state` gets the whole trainer state (for `extra_state`).
        """
        if self.run.resume_checkpoint is None:
            return 0
        # FSDP: every rank keeps its shard of the checkpoint's whole weights and optimizer state.
        load_states = partial(self.ranks.load_full_state, self.model, self.optimizer) if self.ranks.sharded else None
        state = load_checkpoint(self.run.resume_checkpoint, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, load_states=load_states)
        if self.ranks.is_main:  # the checkpoint's totals are every rank's: held once, by rank 0
            self.ledger.load_state_dict(state["ledger"])
        if on_state is not None:
            on_state(state)
        self.run.print(f"resumed from {self.run.resume_checkpoint} at step {state['step']}")
        self.start_step = int(state["step"])
        self.first_eval = state.get("first_eval", {})
        return self.start_step

    def evaluate(self, step: int) -> dict:
        with self.ranks.full_weights(self.model):  # FSDP: rank 0's forwards then gather nothing
            if not self.run.is_main:  # data parallel: rank 0 evaluates
                return {}
            with self.ledger.timed("eval"):
                metrics = self._evaluate_fn()
        self.run.log(step, metrics)
        return metrics

    def train(self, train_step: Callable[[int], dict], *, description: str,
              postfix: Callable[[dict], dict] = lambda metrics: {}) -> None:
        """Evaluate at step 0 (unless resumed), run `train_step` for every remaining step with
        logging, evaluation and checkpoints when due, then the final evaluation.

        `postfix(metrics)` gives the progress bar's fields (already formatted strings).
        """
        cfg = self.run_cfg
        if self.start_step == 0:
            self.first_eval = self.evaluate(0)
        with self.run.progress(self.steps, initial=self.start_step, description=description) as bar:
            for step in range(self.start_step, self.steps):
                done = step + 1
                metrics = train_step(step)
                metrics.update(self.run_ledger().metrics())
                if logged_step(done, cfg.log_every, self.steps):
                    self.run.log(done, metrics)
                bar.advance(**postfix(metrics))
                if cfg.eval_every and done % cfg.eval_every == 0 and done < self.steps:
                    self.evaluate(done)
                if done % cfg.save_every == 0 and done < self.steps:  # the final model is saved apart
                    self._save_checkpoint(done)
        self.final_eval = self.evaluate(self.steps)

    def run_ledger(self) -> ComputeLedger:
        """The compute of the whole run so far: this process's ledger, or with several ranks the
        merge of theirs (a collective: every rank calls it at the same points)."""
        if not self.ranks.distributed:
            return self.ledger
        return ComputeLedger.merged(self.ranks.gather(self.ledger.state_dict()))

    def _save_checkpoint(self, step: int) -> None:
        ledger = self.run_ledger()  # before the rank check: every rank joins the gather
        weights, optimizer_state = self.ranks.full_state(self.model, self.optimizer)  # FSDP: gathered to rank 0
        if not self.run.is_main:
            return
        extra = self._extra_state() if self._extra_state is not None else {}
        save_checkpoint(self.run.dir, step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        tokenizer=self.tokenizer, keep_last=self.run_cfg.keep_last,
                        model_state=weights, optimizer_state=optimizer_state,
                        trainer_state={**extra, "step": step, "ledger": ledger.state_dict(),
                                       "first_eval": self.first_eval})

    def finish(self, summary: dict, *, model: torch.nn.Module, plot_keys: list[str], plot_name: str, title: str,
               also_save: dict[str, torch.nn.Module] | None = None, reward_runners: tuple = ()) -> dict:
        """Save `model` (HF format) to the run's `model/` (and each of `also_save` to its own
        directory, recorded as `<name>_dir`), plot `plot_keys`, write `summary.json` — the
        recipe's fields plus the model and plot paths, seconds, every before/after evaluation
        figure, the ledger and a line per reward runner that saw failures (`reward_errors`,
        also printed) — print the ledger, and return the summary."""
        ledger = self.run_ledger()  # before the rank check: every rank joins the gather
        weights, _ = self.ranks.full_state(model)  # FSDP: the whole weights, gathered to rank 0
        if not self.run.is_main:  # data parallel: rank 0 saves and summarises
            return dict(summary)
        errors = [line for runner in reward_runners if runner is not None and (line := runner.summary())]
        extra_dirs = {f"{name}_dir": str(save_model(module, self.tokenizer, self.run.dir / name))
                      for name, module in (also_save or {}).items()}
        model_dir = (save_model(model, self.tokenizer, self.run.model_dir) if weights is None
                     else save_gathered(model, weights, self.tokenizer, self.run.model_dir))
        plot = plot_metrics(self.run.metrics_path, plot_keys, self.run.dir / plot_name, title=title)
        summary = {
            **summary, "model_dir": str(model_dir), **extra_dirs, "plot": str(plot),
            "seconds": round(time.time() - self.run.started, 2),
            **{f"before/{k}": v for k, v in self.first_eval.items()},
            **{f"after/{k}": v for k, v in self.final_eval.items()},
            **ledger.metrics(),
            **({"reward_errors": errors} if errors else {}),
        }
        self.run.write_summary(summary)
        self.run.console.print(ledger.table())
        for line in errors:
            self.run.console.print(line, markup=False, style="yellow")
        return summary
