"""Commands under a launcher: those that run in one process are refused in one line, and a process
that cannot reach its launch's rendezvous says so in one line (perplexity and train share work out
across processes: tests/test_perplexity_processes.py, test_time_budget.py, test_distributed.py)."""

import pytest

from hf_clm.commands.cli import ONE_PROCESS_COMMANDS, main


@pytest.mark.parametrize("command", ONE_PROCESS_COMMANDS)
def test_a_one_process_command_under_a_launcher_is_one_line(command, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([command, "anything"]) == 2
    expected = (f"hf-clm: error: hf-clm {command} runs in one process, and this launch started 2 (torchrun or "
                f"accelerate launch): run 'hf-clm {command} ...' without a launcher")
    assert capsys.readouterr().err.strip().splitlines() == [expected]
