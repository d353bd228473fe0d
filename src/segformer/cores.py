"""The CPU cores this process may use, and how many of them other work leaves idle.

OpenMP threads that share busy cores wait on each other at every barrier, so a command that picks its own
thread count (``segformer demo``) takes the cores idle right now. The 1-minute load average is a poor signal for
"right now": it decays over minutes, so the ``pip install`` just before a command still counts against an idle
machine. The idle share of each core is read from ``/proc/stat`` (Linux ``proc(5)``: cumulative ticks per CPU
of user, nice, system, idle, iowait, irq, softirq, steal) over a short window instead; the load average is
the fallback where ``/proc/stat`` is not readable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

PROC_STAT = "/proc/stat"
# proc(5): the first eight tick counters of a "cpuN" line (guest time is already counted in user and nice).
TICK_FIELDS = 8
IDLE_FIELDS = (3, 4)  # idle, iowait


def usable_cpus() -> set[int] | None:
    """Ids of the CPUs this process may run on (its affinity mask); None where the system does not say."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def available_cores() -> int:
    """How many CPU cores this process may use: its affinity mask where the system has one, else all."""
    cpus = usable_cpus()
    return len(cpus) if cpus else os.cpu_count() or 1


def cpu_ticks(stat_text: str, cpus: Iterable[int] | None = None) -> tuple[int, int]:
    """(idle ticks, all ticks) summed over the ``cpuN`` lines of ``/proc/stat`` text for N in ``cpus`` (all: None).

    Raises:
        ValueError: naming ``/proc/stat`` when the text holds no matching ``cpuN`` line.
    """
    wanted = None if cpus is None else set(cpus)
    idle = total = found = 0
    for line in stat_text.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit()) or (wanted is not None and int(name[3:]) not in wanted):
            continue
        ticks = [int(value) for value in fields[:TICK_FIELDS]]
        idle += sum(ticks[i] for i in IDLE_FIELDS if i < len(ticks))
        total += sum(ticks)
        found += 1
    if not found:
        raise ValueError(f"{PROC_STAT}: no per-CPU 'cpuN' line for CPUs {sorted(wanted or [])}")
    return idle, total


def idle_cores(window: float = 0.5, path: str = PROC_STAT) -> float | None:
    """Cores of this process's CPUs left idle over the next ``window`` seconds; None where ``path`` is unreadable."""
    cpus = usable_cpus()
    try:
        with open(path) as f:
            idle_before, total_before = cpu_ticks(f.read(), cpus)
        time.sleep(window)
        with open(path) as f:
            idle_after, total_after = cpu_ticks(f.read(), cpus)
    except (OSError, ValueError):
        return None
    elapsed = total_after - total_before
    if elapsed <= 0:  # the counters did not move (a coarse clock): nothing measured
        return None
    return available_cores() * (idle_after - idle_before) / elapsed


def threads_for_idle(cores: int, idle: float | None, load_average: float | None = None) -> int:
    """Threads to run with: the cores left idle, rounded to the nearest whole core, from 1 to ``cores``.

    Args:
        cores: the most threads to use (the cores available).
        idle: cores measured idle just now (``idle_cores``), or None where not measured.
        load_average: the 1-minute load average, used only when ``idle`` is None (cores minus the load);
            None as well: all ``cores``.
    """
    if idle is not None:
        free = idle
    elif load_average is not None:
        free = cores - load_average
    else:
        free = float(cores)
    return max(1, min(cores, int(free + 0.5)))


def idle_threads(most: int | None = None, window: float = 0.5) -> int:
    """``threads_for_idle`` of this machine now: cores idle over ``window`` s, at most ``most`` (default: all)."""
    cores = min(available_cores(), most or available_cores())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return threads_for_idle(cores, idle_cores(window), load)
