"""Time budget: ``max_train_seconds`` ends training by the clock, and the learning-rate schedule
follows the clock, so a run lands at the end of its decay on any machine.

The seconds are those of ``train_tokens_per_second`` (:class:`hf_clm.training.throughput.ThroughputMeter`:
evaluation and saving left out, carried across a resume), so a resumed run continues the same
budget. The schedule is transformers' own (``get_scheduler``: warm-up, cosine, linear,
warmup-stable-decay, ...) laid over a virtual horizon of :data:`VIRTUAL_STEPS` steps and read at
the fraction of the budget a step will have used *when it ends*: the clock's reading plus the
running mean of a step's time. So no decay start is predicted ahead; each step takes the rate of
its own end. Training stops at the step after which another would pass the budget, so the last
step's rate is (up to one step's share of the budget) the schedule's end value. A step much
slower than the mean (a checkpoint write is paused out of the clock, a machine hiccup is not)
only moves the run further along its schedule: it never overshoots the end of the decay, as the
fraction is clipped at 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import ProgressCallback, TrainerCallback, TrainingArguments, get_scheduler

from hf_clm.errors import HfClmError

# The schedule's resolution: transformers' schedules are functions of a step count.
VIRTUAL_STEPS = 1_000_000


class BudgetClock:
    """The budget's view of the training clock: seconds used, a step's mean, the predicted fraction."""

    def __init__(self, seconds: Callable[[], float], budget: float):
        self.seconds, self.budget = seconds, budget
        self.step_mean: float | None = None
        self.steps = 0
        self.last = None

    def step_ended(self) -> None:
        now = self.seconds()
        if self.last is not None:
            took = now - self.last
            self.step_mean = took if self.step_mean is None else 0.9 * self.step_mean + 0.1 * took
        self.last, self.steps = now, self.steps + 1

    def fraction_at_next_step_end(self) -> float:
        return min(1.0, (self.seconds() + (self.step_mean or 0.0)) / self.budget)

    def another_step_fits(self) -> bool:
        return self.seconds() + (self.step_mean or 0.0) <= self.budget


def budget_schedule(args: TrainingArguments, optimizer: torch.optim.Optimizer, clock: BudgetClock
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' schedule of ``args`` over :data:`VIRTUAL_STEPS`, read at the clock's fraction."""
    kwargs = dict(args.lr_scheduler_kwargs or {})
    if "decay_ratio" in kwargs:  # warmup_stable_decay: the last decay_ratio of the budget decays
        kwargs["num_decay_steps"] = round(float(kwargs.pop("decay_ratio")) * VIRTUAL_STEPS)
    virtual = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                            num_warmup_steps=math.ceil(args.warmup_steps * VIRTUAL_STEPS),
                            num_training_steps=VIRTUAL_STEPS, scheduler_specific_kwargs=kwargs)
    shapes = [getattr(virtual, "lr_lambdas", [None])[0]]
    if shapes[0] is None:
        raise HfClmError(f"max_train_seconds needs a schedule of step fractions; lr_scheduler_type "
                         f"{args.lr_scheduler_type} is not one")
    for group, base in zip(optimizer.param_groups, virtual.base_lrs):
        group["lr"] = base  # get_scheduler set the step-0 rate; ours starts from the clock
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda _step: shapes[0](round(clock.fraction_at_next_step_end() * VIRTUAL_STEPS)))


class BudgetStop(TrainerCallback):
    """Stops training when another step would pass the budget; refuses a budget that ends before
    the first step of the run has."""

    def __init__(self, clock: BudgetClock, callbacks=None):
        self.clock, self.callbacks = clock, callbacks

    def on_train_begin(self, args, state, control, **kwargs):
        """The training bar counts steps with no total (Trainer's is the unreachable step count it loops
        on) and shows the budget, until a step's mean time gives the steps it holds."""
        for bar in self.training_bars():
            bar.total = None
            bar.set_postfix_str(f"budget {self.clock.budget:g} s", refresh=True)

    def training_bars(self) -> list:
        if self.callbacks is None:
            return []
        return [callback.training_bar for callback in self.callbacks.callbacks
                if isinstance(callback, ProgressCallback) and getattr(callback, "training_bar", None) is not None]

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_ended()
        self.show_expected_steps(state.global_step)
        if self.clock.steps == 1 and self.clock.seconds() >= self.clock.budget and state.global_step == 1:
            raise HfClmError(f"the budget ends before the first step does: max_train_seconds "
                             f"{self.clock.budget:g} s, and one step took {self.clock.seconds():.1f} s; raise it")
        if not self.clock.another_step_fits():
            control.should_training_stop = True
        return control

    def show_expected_steps(self, step: int) -> None:
        """The training bar's total: the steps the rest of the budget holds at the mean step time
        (Trainer's own total is the unreachable step count it loops on)."""
        if not self.clock.step_mean:
            return
        left = max(self.clock.budget - self.clock.seconds(), 0.0) / self.clock.step_mean
        for bar in self.training_bars():
            bar.total = step + int(left)
            bar.refresh()
