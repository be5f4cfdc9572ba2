"""Scoring across processes: under a launcher (``torchrun``, ``accelerate launch``) each process
scores its share of the batches of windows, and every process gets every batch's rows back.

The batches are those one process would make (:func:`hf_clm.evaluation.scoring.batched`), dealt
round-robin (batch ``i`` to rank ``i mod processes``), so each window is scored exactly once, in
the very batch it would have been in alone. The rows come back by batch index and are summed in
the one-process order, so the figures are those of one process (to the last bit where the device
computes a batch the same way). A rank dealt no batch (more processes than batches) contributes
nothing and still takes part in the gather.

The caller decides: :data:`ONE_PROCESS` (the default everywhere) never communicates, so code that
scores on rank 0 alone under a launcher (a metric computed on the main process) cannot hang in a
collective the other ranks never enter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes that score one text together."""

    rank: int = 0
    count: int = 1

    @property
    def leads(self) -> bool:
        """Whether this process prints and writes the result (rank 0)."""
        return self.rank == 0

    def share(self, indices: Sequence[int]) -> list[int]:
        """The indices this process scores: every ``count``-th, from its rank."""
        return list(indices[self.rank::self.count])

    def gathered(self, own: dict[int, T]) -> dict[int, T]:
        """Every process's ``{index: rows}`` merged, on every process (one ``all_gather_object``)."""
        if self.count == 1:
            return own
        parts: list[dict[int, T] | None] = [None] * self.count
        torch.distributed.all_gather_object(parts, own)
        return {index: rows for part in parts for index, rows in (part or {}).items()}


ONE_PROCESS = Processes()


def launched_processes(timeout_seconds: int = 1800) -> Processes:
    """The processes of this launch (accelerate's state, which sets up the process group: gloo
    where ``ACCELERATE_USE_CPU`` is set, as ``AcceleratorState`` reads it; ``timeout_seconds`` to
    reach the rendezvous and at each collective), or :data:`ONE_PROCESS` outside a launcher."""
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=timeout_seconds))
    if state.num_processes == 1:
        return ONE_PROCESS
    return Processes(state.process_index, state.num_processes)
