"""Progress bars over Dask futures as they complete."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

__all__ = ["track"]


def track(futures: Iterable, total: int, desc: str, unit: str) -> Iterator:
    """Yield ``futures`` in completion order while a progress bar counts them.

    If the consumer stops early (an error, Ctrl-C), the futures not yet done are cancelled
    so a shared cluster does not go on working for a job that has ended.
    """
    from distributed import as_completed

    futures = list(futures)
    if not futures:
        return
    try:
        with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
            for future in as_completed(futures):
                yield future
                bar.update(1)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            pending[0].client.cancel(pending)
