"""max_train_seconds: training ends by the clock and the schedule follows the clock."""

import json

import pytest
import torch
from support.time_budget import budget_run
from transformers import TrainingArguments

from hf_clm.errors import HfClmError
from hf_clm.training.time_budget import BudgetClock, BudgetStop, budget_schedule


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def schedule_at(fractions, budget=100.0, **args):
    """The learning rate a budget schedule gives when the clock reads each fraction of the budget."""
    clock = BudgetClock(FakeClock(), budget)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = budget_schedule(TrainingArguments(output_dir="unused", report_to=[], **args), optimizer, clock)
    rates = []
    for fraction in fractions:
        clock.used = fraction * budget  # the reading at a step's end, no step mean yet
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_a_cosine_schedule_warms_up_and_ends_its_decay_with_the_budget():
    start, warm, middle, end = schedule_at([0.0, 0.1, 0.55, 1.0], lr_scheduler_type="cosine", warmup_steps=0.1)
    assert start == pytest.approx(0.0) and warm == pytest.approx(1.0)
    assert middle == pytest.approx(0.5, abs=1e-3) and end == pytest.approx(0.0, abs=1e-9)


def test_warmup_stable_decay_decays_over_the_last_fraction_of_the_budget():
    stable, decaying, end = schedule_at([0.5, 0.9, 1.0], lr_scheduler_type="warmup_stable_decay",
                                        lr_scheduler_kwargs={"decay_ratio": 0.2})
    assert stable == pytest.approx(1.0) and 0.0 < decaying < 1.0 and end == pytest.approx(0.0, abs=1e-9)


def test_training_stops_when_another_step_would_pass_the_budget():
    clock_time = FakeClock()
    stop = BudgetStop(BudgetClock(clock_time, budget=5.5))
    control, steps = type("Control", (), {"should_training_stop": False})(), 0
    while not control.should_training_stop:
        clock_time.now += 1.0  # each step takes a second
        steps += 1
        stop.on_optimizer_step(None, None, control)
        stop.on_step_end(None, type("State", (), {"global_step": steps})(), control)
    assert steps == 5  # 5 s used: a sixth step would end at 6 s, past the 5.5 s budget


def test_a_budget_shorter_than_the_first_step_is_one_line():
    clock_time = FakeClock()
    stop = BudgetStop(BudgetClock(clock_time, budget=0.5))
    clock_time.now = 2.0
    stop.on_optimizer_step(None, None, None)
    with pytest.raises(HfClmError, match="the budget ends before the first step does: max_train_seconds 0.5 s, "
                                         "and one step took 2.0 s; raise it"):
        stop.on_step_end(None, type("State", (), {"global_step": 1})(), type("Control", (), {})())


def test_a_resumed_run_predicts_its_first_step_from_the_step_time_its_checkpoint_saved():
    """Without the saved mean, the first steps after a resume look free, and the run passes its budget."""
    from transformers import TrainerState

    saved = TrainerState(stateful_callbacks={"BudgetStop": {"args": {}, "attributes": {"step_mean": 1.0}}})
    clock_time = FakeClock()
    stop = BudgetStop(BudgetClock(clock_time, budget=5.0))
    stop.on_train_begin(None, saved, None)
    clock_time.now = 4.5  # the first step after the resume ends with half a step's time left
    control = type("Control", (), {"should_training_stop": False})()
    stop.on_optimizer_step(None, None, control)
    stop.on_step_end(None, type("State", (), {"global_step": 40})(), control)
    assert control.should_training_stop
    assert stop.state()["attributes"]["step_mean"] == 1.0  # what the next checkpoint saves


def test_a_run_by_the_clock_ends_at_the_end_of_its_decay_and_records_its_budget(tmp_path, text_files):
    summary = budget_run(text_files, tmp_path / "run", "3")
    assert summary["max_train_seconds"] == 3.0 and summary["run"]["max_train_seconds"] == 3.0
    assert 1.5 < summary["train_seconds"] <= 3 * 1.25  # a step's noise past the mean; never a whole budget
    rates = [e["learning_rate"] for e in json.loads((tmp_path / "run" / "trainer_state.json").read_text())
             ["log_history"] if "learning_rate" in e]
    assert len(rates) > 10 and rates[-1] < 0.05 * max(rates)  # the last step runs at the decay's end
    assert "max_train_seconds: 3.0" in (tmp_path / "run" / "recipe.yaml").read_text()
    assert "of a 3 s budget" in (tmp_path / "run" / "report.md").read_text()


def test_a_budget_run_says_what_its_budget_held_and_when_far_less_than_the_recipe_was_tuned_for(tmp_path, text_files,
                                                                                                  capsys):
    summary = budget_run(text_files, tmp_path / "run", "10", "--tuned_for_tokens_per_second", "1e6")
    budget = summary["budget"]
    # 10 s at the tuned 1,000,000 tokens/s, 256 tokens a step: 39,062 steps; this machine trains far fewer
    assert budget["steps"] == summary["global_step"] and budget["tuned_for_steps"] == 39062 and budget["far_short"]
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("budget held"))
    assert line == (f"budget held            this run trained {summary['global_step']:,} steps "
                    f"({summary['train_tokens_seen']:,} tokens) at {summary['train_tokens_per_second']:,.0f} tokens/s; "
                    f"the recipe was tuned for ~39,062 steps at 1,000,000 tokens/s: expect a worse perplexity than "
                    f"the recipe's")
    assert "expect a worse perplexity" in (tmp_path / "run" / "report.md").read_text()


def test_a_budget_that_held_what_the_recipe_was_tuned_for_says_only_what_it_trained():
    from hf_clm.run.figures import budget_text

    held = {"steps": 123, "tokens_per_second": 839.4, "tuned_for_steps": 200, "tuned_for_tokens_per_second": 1400.0,
            "far_short": False}
    assert budget_text(held, 251_904) == "this run trained 123 steps (251,904 tokens) at 839 tokens/s"
    assert budget_text({**held, "far_short": True}, 251_904).endswith(
        "; the recipe was tuned for ~200 steps at 1,400 tokens/s: expect a worse perplexity than the recipe's")


def test_the_training_bar_of_a_budget_run_starts_without_the_virtual_step_count():
    """Trainer opens its bar at 0/max_steps, the unreachable step count of a budget run; BudgetStop
    (added after Trainer's ProgressCallback) takes the total away and names the budget instead."""
    from transformers import ProgressCallback, TrainerControl, TrainerState
    from transformers.trainer_callback import CallbackHandler

    from hf_clm.recipe.schema import UNBOUNDED_STEPS

    progress = ProgressCallback()
    handler = CallbackHandler([progress], None, None, None, None)
    stop = BudgetStop(BudgetClock(FakeClock(), budget=300.0), handler)
    handler.add_callback(stop)
    state = TrainerState(max_steps=UNBOUNDED_STEPS, is_world_process_zero=True, is_local_process_zero=True)
    handler.on_train_begin(None, state, TrainerControl())
    bar = progress.training_bar
    try:
        assert bar.total is None and "budget 300 s" in str(bar) and "1099511627776" not in str(bar)
    finally:
        bar.close()
