"""Where the planner's tasks run: a local process pool or a Dask distributed cluster (same
tasks, results in completion order; the search sorts them by layout)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from simtrain.apps.workers import local_workers
from simtrain.errors import ConfigError


def _ignore_sigint() -> None:  # pragma: no cover - runs in worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """A process pool on this machine (``workers`` processes; 1 = in this process)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = local_workers(workers)
        self._pool: Any = None

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        import multiprocessing as mp

        # A daemonic process (a worker of another pool: the fuzz campaign, a user's own pool)
        # may not start children: screen in this process instead of failing.
        if self.workers == 1 or len(items) <= 1 or mp.current_process().daemon:
            for it in items:
                yield fn(it)
            return
        if self._pool is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["simtrain.apps.plan"])
            self._pool = ctx.Pool(self.workers, initializer=_ignore_sigint)
        ok = False
        try:
            yield from self._pool.imap_unordered(fn, items)
            ok = True
        finally:
            if not ok:  # interrupted or failed: stop the workers now
                self.close(terminate=True)

    def close(self, terminate: bool = False) -> None:
        if self._pool is not None:
            if terminate:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None


class DaskExecutor:
    """Tasks on a Dask distributed cluster: ``scheduler`` is its address (``tcp://host:8786``);
    None starts a local cluster of ``workers`` processes. Workers need simtrain installed (and
    the plan's files, if it names any, at the same paths)."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 client: Any = None) -> None:  # fmt: skip
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(None, "--executor", "dask needs dask.distributed: pip install "
                              f"'simtrain[dask]' ({exc})", "dask") from None  # fmt: skip
        self._cluster = None
        self._own = client is None
        if client is not None:
            self.client = client
        elif scheduler:
            try:
                self.client = Client(scheduler, timeout=10)
            except OSError as exc:  # no scheduler there (dask: "Timed out trying to connect")
                raise ConfigError(None, "--scheduler", f"cannot connect to the Dask scheduler "
                                  f"{scheduler!r}: {exc}") from None  # fmt: skip
            except (ValueError, TypeError) as exc:
                # an address dask cannot parse or a scheme it cannot open without more setup
                # ('x', 'tcp://h:x', 'foo://h:1', 'tls://h:1' without an SSL context: a fuzz
                # campaign, each a traceback)
                raise ConfigError(None, "--scheduler", f"not a Dask scheduler address dask "
                                  f"can open ({exc})", scheduler,
                                  "tcp://HOST:PORT") from None  # fmt: skip
        else:
            self._cluster = LocalCluster(n_workers=local_workers(workers),
                                         threads_per_worker=1)  # fmt: skip
            self.client = Client(self._cluster)

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from dask.distributed import as_completed

        futures = self.client.map(fn, list(items), pure=False)
        ok = False
        try:
            for fut in as_completed(futures):
                yield fut.result()
            ok = True
        finally:
            if not ok:
                self.client.cancel(futures)

    def close(self, terminate: bool = False) -> None:
        if self._own:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()


def make_executor(executor: str, workers: int | None, scheduler: str | None) -> Any:
    if executor == "local":
        return LocalExecutor(workers)
    if executor == "dask":
        return DaskExecutor(scheduler, workers)
    raise ConfigError(None, "--executor", "unknown value", executor, "local | dask")
