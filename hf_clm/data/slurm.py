"""datatrove's Slurm executor, asking for memory only when the recipe says how much: a cluster's
own default otherwise (a one-host Slurm may declare next to no memory, and refuses any request)."""

from __future__ import annotations

from datatrove.executor import SlurmPipelineExecutor


class SlurmExecutor(SlurmPipelineExecutor):
    """``mem_per_cpu_gb`` None: no ``--mem-per-cpu`` line in the job script."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        if self.mem_per_cpu_gb is None:
            args.pop("mem-per-cpu", None)
        return args

    def launch_merge_stats(self):
        """No second job to merge the tasks' stats (it would ask for 1 GB per CPU): the shards'
        descriptions are what ``train`` reads."""
