"""Getting a Dask client: a LocalCluster sized for the machine, or an existing scheduler.

TLS with mutual authentication
------------------------------
Pass ``tls_ca``, ``tls_cert`` and ``tls_key`` (CLI: ``--tls-ca/--tls-cert/--tls-key``) to
talk TLS to a ``tls://`` scheduler: the client checks that ``tls_ca`` signed the scheduler's
certificate and presents ``tls_cert`` for the scheduler (and workers) to check in turn. The
scheduler and workers are started with the same CA, e.g.::

    dask scheduler --protocol tls --tls-ca-file ca.pem --tls-cert node.pem --tls-key node.key
    dask worker tls://host:8786 --tls-ca-file ca.pem --tls-cert node.pem --tls-key node.key

Without ``--scheduler`` the options start the LocalCluster itself on ``tls://127.0.0.1``
with that one certificate for scheduler, workers and client, so local traffic is
encrypted too.

Instead of the options, Dask's own security configuration may be used
(``distributed.comm.tls.ca-file``, ``distributed.comm.tls.client.cert``,
``distributed.comm.tls.client.key``, ... in a Dask YAML file or ``DASK_DISTRIBUTED__COMM__TLS__*``
environment variables): with no options given, ``distributed.Security()`` reads it, both for a
``tls://`` scheduler and for the LocalCluster (which then uses ``tls://`` when
``distributed.comm.require-encryption`` is set). The options, when given, take precedence.
"""

from __future__ import annotations

import gc
import logging
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from storage import ConfigError
from workflows.options import check_options, option
from workflows.preflight import check_workers, expected_of, preflight
from workflows.watchdog import watch

__all__ = ["ClusterSettings", "dask_client", "check_workers", "IN_PROCESS_MAX", "runs_in_process"]

log = logging.getLogger(__name__)

_TLS_OPTIONS = (("tls_ca", "--tls-ca"), ("tls_cert", "--tls-cert"), ("tls_key", "--tls-key"))

IN_PROCESS_MAX = 2000
"""Default of ``ClusterSettings.in_process_max``: a job of at most this many images to encode
(``index``; plus the images already indexed when the run may compact) or queries (``query``)
runs in the client's process. Worker processes cost a
small job most of its time: each starts an interpreter and imports TensorFlow (about 3 s of a
core each) before its first task; in-process, TensorFlow is imported once and the tasks run
on threads. docs/BENCHMARKS.md section 9 measures both."""


@dataclass(frozen=True)
class ClusterSettings:
    """Where tasks run.

    ``scheduler`` set: connect to that Dask scheduler (``tcp://host:8786``, or ``tls://host:8786``
    with ``tls_ca``/``tls_cert``/``tls_key``). Otherwise start a ``LocalCluster`` of ``workers``
    processes (default: one per core) with ``threads_per_worker`` threads each;
    ``processes=False`` keeps everything in this process (needed for ``memory://`` URLs, which
    are private to a process).

    ``tls_ca`` (CA certificate, PEM), ``tls_cert`` (this client's certificate, PEM) and
    ``tls_key`` (its private key, PEM) come together or not at all; see the module docstring.

    ``no_workers_timeout``: on a ``scheduler``'s cluster, a job fails (one line, nothing
    committed) once no worker that passed the preflight has been connected for that many
    seconds (:mod:`workflows.watchdog`); 0 waits for ever.

    Small jobs: with none of ``scheduler``, ``workers`` and the TLS options given, a job that
    tells :func:`dask_client` its size (images to encode, queries to answer) runs on an
    in-process cluster (threads of this process, no worker processes) when that size is at most
    ``in_process_max`` (0: never); see :func:`runs_in_process`.
    """

    scheduler: str | None = option(None, "Address of a running Dask scheduler (tcp://host:8786, or tls://host:8786 with "
                                   "--tls-*); default: start a LocalCluster.", envvar="PATCHHASH_SCHEDULER",
                                   example="tcp://scheduler:8786")
    workers: int | None = option(None, "LocalCluster worker processes (default: one per core).", envvar="PATCHHASH_WORKERS",
                                 minimum=1, example="4")
    threads_per_worker: int = option(1, "Threads per LocalCluster worker.", envvar="PATCHHASH_THREADS_PER_WORKER", minimum=1,
                                     example="1")
    memory_limit: str | None = option("auto", "Memory limit per LocalCluster worker (e.g. 4GB, auto).", type="size",
                                      envvar="PATCHHASH_MEMORY_LIMIT", example="4GB")
    in_process_max: int = option(IN_PROCESS_MAX, "Without --scheduler, --workers or --tls-*: run a job of at most this many "
                                 "images to encode (index; plus those indexed, if it may compact) or queries (query) on threads of "
                                 "this process instead of starting "
                                 "worker processes, which each import TensorFlow (0: never).",
                                 envvar="PATCHHASH_IN_PROCESS_MAX", minimum=0, example="2000")
    processes: bool = True
    tls_ca: str | None = option(None, "CA certificate (PEM) of a TLS cluster: with --tls-cert and --tls-key, talk TLS with "
                                "mutual authentication (tls:// --scheduler, or a TLS LocalCluster).", type="path",
                                envvar="PATCHHASH_TLS_CA", example="certs/ca.pem")
    tls_cert: str | None = option(None, "This client's certificate (PEM), signed by the cluster's CA.", type="path",
                                  envvar="PATCHHASH_TLS_CERT", example="certs/client.pem")
    tls_key: str | None = option(None, "The private key (PEM) of --tls-cert.", type="path", envvar="PATCHHASH_TLS_KEY",
                                 example="certs/client.key")
    no_workers_timeout: float = option(120.0, "With --scheduler: fail the job when no usable worker has been connected "
                                       "for this many seconds (none joined, or all left; 0: wait forever).",
                                       envvar="PATCHHASH_NO_WORKERS_TIMEOUT", minimum=0, example="120")

    def __post_init__(self) -> None:
        check_options(self)
        for field, _ in _TLS_OPTIONS:
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, os.fspath(value))
        self._check_tls()

    @property
    def tls(self) -> bool:
        """Whether TLS options were given (all three, after validation)."""
        return self.tls_ca is not None

    def _check_tls(self) -> None:
        given = [option for field, option in _TLS_OPTIONS if getattr(self, field)]
        if given and len(given) < len(_TLS_OPTIONS):
            missing = [option for field, option in _TLS_OPTIONS if not getattr(self, field)]
            raise ConfigError(
                f"{', '.join(given)} given without {', '.join(missing)}: TLS needs all three "
                "(--tls-ca: the CA certificate, --tls-cert/--tls-key: this client's certificate and key)"
            )
        for field, option in _TLS_OPTIONS:
            path = getattr(self, field)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{option} {path}: no such file; pass a PEM file on this machine")
        scheme = self.scheduler.split("://", 1)[0].lower() if self.scheduler and "://" in self.scheduler else None
        if given:
            if self.scheduler and scheme != "tls":
                raise ConfigError(
                    f"--scheduler {self.scheduler} is not a TLS address but --tls-* options were given; "
                    f"use tls://{self.scheduler.split('://', 1)[-1]}"
                )
            self._check_pem()
        elif scheme == "tls" and not _dask_tls_configured():
            raise ConfigError(
                f"--scheduler {self.scheduler} needs TLS credentials: pass --tls-ca, --tls-cert and --tls-key "
                "(or set distributed.comm.tls.ca-file, .client.cert and .client.key in the Dask config)"
            )

    def _check_pem(self) -> None:
        """Load the files once here so a wrong file fails now, with the option's name, not mid-connect."""
        try:
            ssl.create_default_context(cafile=self.tls_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"--tls-ca {self.tls_ca} is not a PEM CA certificate ({exc})") from None
        try:
            ssl.create_default_context().load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, ValueError) as exc:
            # the ssl error names the failing step, never the key's contents
            raise ConfigError(
                f"--tls-cert {self.tls_cert} / --tls-key {self.tls_key}: not a PEM certificate and its "
                f"matching unencrypted private key ({exc})"
            ) from None

    def security(self) -> "distributed.Security | None":  # noqa: F821
        """The ``distributed.Security`` for the client (and a local cluster), or None without TLS.

        With the TLS options: that CA and one certificate for the client, scheduler and worker
        roles, encryption required. Without them but with TLS in the Dask config:
        ``Security()``, which reads the config. Otherwise None (distributed's defaults).
        """
        from distributed import Security

        if self.tls:
            return Security(
                tls_ca_file=self.tls_ca,
                tls_client_cert=self.tls_cert, tls_client_key=self.tls_key,
                tls_scheduler_cert=self.tls_cert, tls_scheduler_key=self.tls_key,
                tls_worker_cert=self.tls_cert, tls_worker_key=self.tls_key,
                require_encryption=True,
            )
        if _dask_tls_configured():
            return Security()
        return None


def _dask_tls_configured() -> bool:
    """Whether Dask's config names a CA and a client certificate (what ``Security()`` would use)."""
    import dask.config

    return bool(dask.config.get("distributed.comm.tls.ca-file", None)
                and dask.config.get("distributed.comm.tls.client.cert", None))


def runs_in_process(settings: ClusterSettings, size: int | None) -> bool:
    """Whether a job of ``size`` images or queries runs on an in-process cluster.

    Only when nothing says where it runs (no ``scheduler``, ``workers`` or TLS options, and
    ``processes`` left on: explicit settings are obeyed as they are), its size is known, and
    ``size <= settings.in_process_max`` (which is not 0).
    """
    explicit = settings.scheduler or settings.workers is not None or settings.tls or not settings.processes
    if explicit or size is None or settings.in_process_max == 0 or size > settings.in_process_max:
        return False
    return not _dask_tls_configured()  # a TLS LocalCluster from Dask's config: as without this option


def _dashboard(client) -> str:
    try:
        return client.dashboard_link or "none"
    except (KeyError, AttributeError):  # a scheduler started without a dashboard
        return "none"


@contextmanager
def dask_client(settings: ClusterSettings, size: int | None = None, model=None) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a connected ``distributed.Client``; closes what it started.

    ``size`` (the images a job encodes, or its queries; ``None``: unknown) lets a small job run
    in this process (:func:`runs_in_process`): one in-process worker with a thread per core.

    On a ``scheduler``'s cluster, the preflight (:mod:`workflows.preflight`) checks every
    worker, now and as it joins: it imports patchhash, runs the client's version and, given
    ``model`` (an :class:`~storage.location.IndexLocation` of the model folder the job's
    workers load), reads the same weights there; and a watchdog (:mod:`workflows.watchdog`)
    fails the job once no worker has been connected for ``settings.no_workers_timeout``.

    Raises
    ------
    ConfigError
        The scheduler cannot be reached, or refused this client (for ``tls://``: a certificate
        not signed by the cluster's CA, or a scheduler certificate not signed by ``tls_ca``), or
        a worker cannot import patchhash (:func:`check_workers`).
    WorkerMismatchError
        (a ``ConfigError``) a worker cannot import patchhash, runs another version or reads
        another model.
    ClusterUnavailableError
        No worker was connected for ``settings.no_workers_timeout`` seconds.
    """
    from distributed import Client, LocalCluster

    from workflows.worker_log import QuietWorkerLog

    # distributed configures its loggers at import; keep its INFO chatter out of job output
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core", "distributed.worker", "distributed.http"):
        logging.getLogger(name).setLevel(logging.WARNING)
    security = settings.security()
    if settings.scheduler:
        try:
            client = Client(settings.scheduler, security=security)
        except (OSError, TimeoutError) as exc:
            hint = " (check that --tls-ca signed the scheduler's certificate and the cluster's CA signed --tls-cert)" \
                if settings.scheduler.startswith("tls://") else ""
            failure = f"cannot connect to Dask scheduler {settings.scheduler}{hint}: {exc}"
        else:
            failure = None
        if failure is not None:
            # The half-started Client lives on in the traceback. Were it finalised by the garbage
            # collector inside the next Client's start, its close would wait on the loop lock that
            # start holds (a deadlock seen in tests/test_tls.py): finalise it here instead.
            gc.collect()
            raise ConfigError(failure)
        with client:
            log.info("connected to Dask scheduler %s (dashboard: %s)", settings.scheduler, _dashboard(client))
            with preflight(client, expected_of(model)) as refused, \
                    watch(client, settings.scheduler, settings.no_workers_timeout, refused):
                yield client
        return
    cores = max(1, os.cpu_count() or 1)
    if runs_in_process(settings, size):
        log.info("small job (%d <= --in-process-max %d): running on threads of this process, no worker processes",
                 size, settings.in_process_max)
        settings = replace(settings, processes=False, workers=1, threads_per_worker=cores)
    workers = settings.workers or cores
    threads = settings.threads_per_worker
    # TensorFlow sizes its pools from the core count at import; pin it to the worker's threads
    env = {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "OMP_NUM_THREADS": str(threads)}
    kwargs = dict(n_workers=workers, threads_per_worker=threads, processes=settings.processes,
                  dashboard_address=":0", silence_logs=logging.WARNING)
    if settings.processes:
        kwargs.update(memory_limit=settings.memory_limit, env=env)
    if settings.tls:
        # the dashboard is plain, unauthenticated HTTP: keep it off other machines too
        kwargs.update(protocol="tls://", host="127.0.0.1", security=security, dashboard_address="127.0.0.1:0")
    with LocalCluster(**kwargs) as cluster, Client(cluster, security=security) as client:
        log.info(
            "LocalCluster%s: %d %s x %d thread(s); dashboard: %s",
            " (TLS)" if settings.tls else "", workers, "worker processes" if settings.processes else "in-process worker(s)",
            threads, _dashboard(client),
        )
        check_workers(client)  # before the plugin, which workers unpickle by importing workflows
        client.register_plugin(QuietWorkerLog())  # one line per failure: the client reports the task's error
        yield client
