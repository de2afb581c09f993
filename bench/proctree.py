"""Memory of a process tree (Linux ``/proc``): its pids, resident and proportional set size.

RSS counts a page shared between processes (the libraries every Python worker maps:
libpython, numpy, pyarrow; chdb in every process that loads it) once per process; PSS
splits it between them, so it is what the tree really takes. PSS is read from
``smaps_rollup``, which walks every mapping of a process: dearer than RSS.
"""

from __future__ import annotations

from pathlib import Path


def tree_pids(root: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    """``root`` and all its descendants, the children of every thread included, minus
    ``exclude`` (and their descendants).

    ``/proc/PID/task/TID/children`` lists the children a thread forked; the Flink JVM forks
    its Python workers from threads other than its main one, so reading only the main
    thread's list would miss the workers.
    """
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in exclude:
            continue
        pids.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                stack.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return pids


def _status_kb(pid: int, name: str, file: str) -> int:
    """The ``name`` line (in kB) of ``/proc/PID/<file>``; 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/{file}").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        label, _, rest = line.partition(":")
        if label == name:
            return int(rest.split()[0])
    return 0


def rss_bytes(pids: list[int]) -> int:
    """The resident set size of ``pids``, summed."""
    return sum(_status_kb(pid, "VmRSS", "status") for pid in pids) * 1024


def pss_bytes(pids: list[int]) -> int:
    """The proportional set size of ``pids``, summed."""
    return sum(_status_kb(pid, "Pss", "smaps_rollup") for pid in pids) * 1024


def tree_rss_bytes(root: int, exclude: frozenset[int] = frozenset()) -> int:
    """Resident memory of ``root``'s tree (see :func:`tree_pids`)."""
    return rss_bytes(tree_pids(root, exclude))


def tree_memory(root: int) -> tuple[int, int, int]:
    """RSS and PSS (bytes) of ``root``'s tree, and its process count."""
    pids = tree_pids(root)
    return rss_bytes(pids), pss_bytes(pids), len(pids)
