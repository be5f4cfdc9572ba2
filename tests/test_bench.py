"""The benchmark runs end to end on tiny inputs (it measures nothing meaningful at this size)."""

import json
import subprocess
import sys

from conftest import REPO, requires_shared_data


@requires_shared_data
def test_bench_quick_runs_and_writes_its_table(tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "data", "eval", "--output",
                             str(output)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    stages = {row["stage"] for row in rows}
    assert {"prepare memory", "evaluate"} <= stages
    assert all(row["ratio"] is None or row["ratio"] > 0 for row in rows)
    assert "| stage | comparison | ratio |" in result.stdout
