"""Interleaved timing rounds: every cell of a batch size takes its turn in each round, in a
rotated order, so drift of the machine (clock, thermals, a neighbour's job) hits all alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

MIN_ITERS = 3


@dataclass
class Cell:
    """One runner and one feed at one batch size; ``times`` collects seconds per call."""

    key: tuple
    run: Callable[[], object]
    times: list[float] = field(default_factory=list)
    estimate_s: float = 0.0


def _timed(cell: Cell) -> float:
    t0 = time.perf_counter()
    cell.run()
    return time.perf_counter() - t0


def measure_interleaved(cells: list[Cell], warmup: int = 3, iters: int | None = None,
                        duration: float | None = 2.0, round_s: float | None = None) -> None:
    """Fill ``cell.times`` for all cells.

    ``iters``: that many rounds of one call per cell. Otherwise each cell runs until it has
    ``duration`` seconds of calls (and at least MIN_ITERS); a round gives each cell about
    ``round_s`` seconds (default duration/10, between 20 ms and 0.5 s) of back-to-back calls.
    """
    for cell in cells:
        last = 0.0
        for _ in range(max(1, warmup)):
            last = _timed(cell)
        cell.estimate_s = max(last, 1e-6)
    if iters is not None:
        for r in range(iters):
            for i in range(len(cells)):
                cell = cells[(i + r) % len(cells)]
                cell.times.append(_timed(cell))
        return
    duration = 2.0 if duration is None else duration
    if round_s is None:
        round_s = min(0.5, max(0.02, duration / 10))
    r = 0
    while True:
        pending = [c for c in cells if sum(c.times) < duration or len(c.times) < MIN_ITERS]
        if not pending:
            return
        for i in range(len(pending)):
            cell = pending[(i + r) % len(pending)]
            k = max(1, int(round_s / cell.estimate_s))
            for _ in range(k):
                cell.times.append(_timed(cell))
            recent = cell.times[-k:]
            cell.estimate_s = max(sum(recent) / len(recent), 1e-6)
        r += 1
