"""Preparation as a datatrove pipeline: ``hf-clm prepare RECIPE --executor local|slurm|ray --tasks N``.

Two stages. First, here, once: the tokenizer is decided and saved beside the blocks
(:func:`~hf_clm.data.shards.decide_tokenizer`; a BPE is trained on the training split). Then N
datatrove tasks: task I runs :func:`~hf_clm.data.shards.prepare_shard` for shard I of N — the code
path of ``hf-clm prepare --shard I --num_shards N`` — into the same prepared_dataset folder, where
``train`` reads them when all N are there. datatrove writes ``LOGGING_DIR/completions/0000I`` when
task I returns, and a rerun of the same command skips those tasks; ``pipeline.json`` beside them
records what they were made for, so a rerun with another recipe or task count runs every task again.

The task is a class in this module file, not a closure: datatrove's local workers start from a
fork server, and Slurm and Ray workers unpickle it, so it must be importable by module path.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hf_clm.data.blocks import TokenCounts
from hf_clm.data.parts import parts_without_documents
from hf_clm.data.prepare import check_preparable, print_counts
from hf_clm.data.prepared import tokenizer_source
from hf_clm.data.shards import Shard, decide_tokenizer, prepare_shard, sharded_description
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.data_recipe import DataRecipe, PrepareArguments
from hf_clm.recipe.schema import DataArguments, ModelArguments
from hf_clm.run.artifacts import read_json, write_json
from hf_clm.run.locks import folder_lock

logger = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"  # in the logging folder: the recipe and task count its completions belong to
LOGGING_DIRNAME = ".pipeline"  # the default logging folder, inside prepared_dataset
CLUSTER_INSTALL = "pip install 'hf-clm[cluster]'"
RAY_INSTALL = "pip install 'hf-clm[ray]'"
# Data keys that change how fast a task runs, not what it writes.
SPEED_KEYS = ("preprocessing_num_workers",)


class PrepareTaskError(Exception):
    """A task that failed: its rank and why, in one line (picklable: it crosses process boundaries)."""

    def __init__(self, rank: int, message: str):
        super().__init__(rank, message)
        self.rank, self.message = rank, message

    def __str__(self) -> str:
        return f"task {self.rank}: {self.message}"


@dataclasses.dataclass
class PrepareTask:
    """The pipeline's one step: task ``rank`` of ``world_size`` prepares shard ``rank`` of ``world_size``."""

    model_values: dict[str, Any]
    data_values: dict[str, Any]

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        recipe = DataRecipe(ModelArguments(**self.model_values), DataArguments(**self.data_values), PrepareArguments())
        try:
            prepare_shard(recipe, Shard(rank, world_size))
        except Exception as err:
            raise PrepareTaskError(rank, first_line(err)) from err
        return data

    def __repr__(self) -> str:
        return f"hf-clm prepare task ({self.data_values.get('prepared_dataset')})"


def check_executor(args: PrepareArguments) -> None:
    """What the executor needs is here: datatrove, and sbatch (slurm) or the ray package (ray)."""
    if importlib.util.find_spec("datatrove") is None:
        raise HfClmError(f"executor {args.executor} with tasks {args.tasks} runs through datatrove, which is not "
                         f"installed: {CLUSTER_INSTALL}")
    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise HfClmError("executor slurm needs Slurm's sbatch on PATH, and there is none: run on a Slurm login node "
                         "(or add Slurm's bin folder to PATH), or use --executor local or ray")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise HfClmError(f"executor ray needs the ray package, which is not installed: {RAY_INSTALL}")


def check_reachable(address: str) -> None:
    """A Ray address's host answers on its port (``ray.init`` itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise HfClmError(f"ray_address must be HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise HfClmError(f"executor ray: no Ray cluster answers at {address} ({err.strerror or first_line(err)}); "
                         f"start one with 'ray start --head' and give its address as ray_address") from None


def join_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or the one this process joined, or start one here."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "to join or start"
        raise HfClmError(f"executor ray: no Ray cluster {where} ({first_line(err)}); start one with 'ray start "
                         f"--head' and give its address as ray_address") from None


def default_partition() -> str | None:
    """The Slurm partition marked default (``sinfo`` prints it with a ``*``)."""
    listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    return next((p.rstrip("*") for p in listed if p.endswith("*")), listed[0] if listed else None)


def executor_for(recipe: DataRecipe, logging_dir: Path):
    """The datatrove executor of the recipe's ``prepare`` settings."""
    args = recipe.prepare_args
    pipeline = [PrepareTask(dataclasses.asdict(recipe.model_args), dataclasses.asdict(recipe.data_args))]
    common = {"tasks": args.tasks, "logging_dir": str(logging_dir)}
    if args.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        workers = args.workers or recipe.data_args.preprocessing_num_workers or 1
        return LocalPipelineExecutor(pipeline, workers=min(workers, args.tasks), **common)
    if args.executor == "slurm":
        from hf_clm.data.slurm import SlurmExecutor

        return SlurmExecutor(pipeline, time=args.time, partition=args.partition or default_partition(),
                                     cpus_per_task=args.cpus_per_task, mem_per_cpu_gb=args.mem_per_cpu_gb,
                                     workers=args.workers or -1, job_name="hf-clm-prepare", qos="",
                                     env_command=f"export PATH={Path(sys.executable).parent}:$PATH",
                                     sbatch_args=args.sbatch_args, slurm_logs_folder=str(logging_dir / "slurm_logs"), **common)
    from datatrove.executor import RayPipelineExecutor

    join_ray(args.ray_address)
    return RayPipelineExecutor(pipeline, workers=args.workers or -1, cpus_per_task=args.cpus_per_task,
                               mem_per_cpu_gb=args.mem_per_cpu_gb or 0, **common)


def pipeline_record(recipe: DataRecipe) -> dict[str, Any]:
    data = {key: value for key, value in dataclasses.asdict(recipe.data_args).items() if key not in SPEED_KEYS}
    return {"tasks": recipe.prepare_args.tasks, "tokenizer": tokenizer_source(recipe.model_args, recipe.data_args),
            "model": dataclasses.asdict(recipe.model_args), "data": data}


def completion_file(logging_dir: Path, rank: int) -> Path:
    return logging_dir / "completions" / f"{rank:05d}"


def keep_valid_completions(logging_dir: Path, recipe: DataRecipe, root: Path) -> None:
    """Completions a rerun may skip: made for this recipe and task count, of shards still in ``root``."""
    record = pipeline_record(recipe)
    if (logging_dir / PIPELINE_FILE).is_file() and read_json(logging_dir / PIPELINE_FILE, "") != record:
        logger.info("Running every task again: %s was made for another recipe or task count", logging_dir)
        shutil.rmtree(logging_dir / "completions", ignore_errors=True)
    for rank in range(recipe.prepare_args.tasks):
        if not Shard(rank, recipe.prepare_args.tasks).description_path(root).is_file():
            completion_file(logging_dir, rank).unlink(missing_ok=True)
    logging_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, logging_dir / PIPELINE_FILE)


def unfinished_error(logging_dir: Path, tasks: int, err: BaseException | None) -> HfClmError:
    """Which task failed (or which did not finish), with its log file."""
    failed = next((e for e in (err, getattr(err, "__cause__", None)) if isinstance(e, PrepareTaskError)), None)
    unfinished = [rank for rank in range(tasks) if not completion_file(logging_dir, rank).exists()]
    rank = failed.rank if failed else (unfinished[0] if unfinished else 0)
    why = failed.message if failed else (first_line(err) if err else "it did not finish")
    others = [r for r in unfinished if r != rank]
    rest = f"; tasks {', '.join(map(str, others[:8]))} did not finish either" if others else ""
    return HfClmError(f"prepare task {rank} of {tasks} failed: {why} (its log: "
                      f"{logging_dir / 'logs' / f'task_{rank:05d}.log'}){rest}; fix the cause and run the same command "
                      f"again: finished tasks are skipped")


def run_pipeline(recipe: DataRecipe) -> Path:
    """``hf-clm prepare`` through datatrove: the tokenizer here, then the recipe's tasks."""
    root = check_preparable(recipe)
    args = recipe.prepare_args
    check_executor(args)
    if empty := parts_without_documents(recipe.data_args, args.tasks):
        raise HfClmError(f"tasks {args.tasks}: part{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty[:8]))} of "
                         f"the corpus would hold no training document (each task reads its run of files or byte range "
                         f"and keeps the documents that start in it); use at most {args.tasks - len(empty)} tasks")
    decide_tokenizer(recipe, root)
    logging_dir = Path(args.logging_dir or root / LOGGING_DIRNAME).absolute()
    # a part writer of the folder (shared with its tasks' shards): no whole prepare meanwhile, and a
    # second launch into the folder meets this one instead of removing its completions
    with folder_lock(root, "prepared_dataset", part="pipeline"):
        keep_valid_completions(logging_dir, recipe, root)
        executor = executor_for(recipe, logging_dir)
        try:
            executor.run()
        except subprocess.CalledProcessError as err:  # sbatch refused the job array; its message is above
            raise HfClmError(f"executor slurm: sbatch refused the job array (exit {err.returncode}, its message is "
                             f"above); the script: {logging_dir / 'launch_script.slurm'}") from None
        except Exception as err:  # a task's failure, as the executor passes it on
            raise unfinished_error(logging_dir, args.tasks, err) from None
    if args.executor == "slurm":
        print(f"submitted {args.tasks} tasks as Slurm job {executor.job_id}; task logs in {logging_dir / 'logs'}; "
              f"train reads {root} once every task has finished (run this command again to resubmit unfinished ones)")
        return root
    if any(not completion_file(logging_dir, rank).exists() for rank in range(args.tasks)):
        raise unfinished_error(logging_dir, args.tasks, None)
    description = sharded_description(root)
    print_counts({name: TokenCounts.from_dict(count) for name, count in description["counts"].items()})
    print(f"saved to {root} ({args.tasks} tasks, {args.executor})")
    return root
