"""Progress of a job's stages: bars on a terminal, timestamped log lines otherwise.

:func:`progress` is a tqdm bar when stderr is a terminal and the log format is text, and a
:class:`workflows.logformat.ProgressLog` otherwise (a log line every ``--progress-interval``
seconds with done/total, rate and ETA); :func:`track` counts Dask futures with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from workflows.logformat import ProgressLog, show_bars

__all__ = ["track", "progress"]


def progress(total: int, desc: str, unit: str, **bar_options):
    """A progress display of ``total`` steps (``update(n)``, ``set_postfix``; a context manager)."""
    if show_bars():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **bar_options)
    return ProgressLog(total, desc, unit)


def track(futures: Iterable, total: int, desc: str, unit: str) -> Iterator:
    """Yield ``futures`` in completion order while a progress display counts them.

    If the consumer stops early (an error, Ctrl-C), the futures not yet done are cancelled
    so a shared cluster does not go on working for a job that has ended.
    """
    from distributed import as_completed

    futures = list(futures)
    if not futures:
        return
    try:
        with progress(total, desc, unit) as bar:
            for future in as_completed(futures):
                yield future
                bar.update(1)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            pending[0].client.cancel(pending)
