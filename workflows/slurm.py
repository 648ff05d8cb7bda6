"""A Dask cluster on SLURM for ``patchhash`` jobs, through dask-jobqueue.

``slurm_cluster(settings)`` builds a ``dask_jobqueue.SLURMCluster`` (the scheduler runs in this
process; every worker job is an ``sbatch`` job running ``python -m distributed.cli.dask_worker``)
and submits nothing; ``cluster.scale(jobs=n)`` does. ``python -m workflows.slurm --config
cluster.yaml`` starts one, submits ``jobs`` worker jobs, writes the scheduler's address to
``--address-file`` and keeps running until SIGTERM or Ctrl-C, when it cancels the jobs
(``scancel``). ``patchhash index --scheduler ADDRESS`` then runs on it; see
``workflows/deploy/slurm/`` for the whole recipe and an example cluster file.

Needs the ``cluster`` extra: ``pip install 'patchhash[cluster]'`` (dask-jobqueue).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from storage import ConfigError

__all__ = ["SlurmSettings", "load_slurm_settings", "slurm_cluster", "main"]

log = logging.getLogger(__name__)

# SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_WALLTIME = re.compile(r"^(\d+-\d+(:\d{1,2}){0,2}|\d+(:\d{1,2}){0,2})$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN = re.compile(r"^\S+$")


@dataclass(frozen=True)
class SlurmSettings:
    """One SLURM worker job, and how many of them to run.

    Parameters
    ----------
    queue
        The partition (``#SBATCH -p``); None: the site's default.
    account
        The account charged (``#SBATCH -A``); None: the user's default.
    cores
        CPUs of one job (``--cpus-per-task``), shared by its worker processes.
    processes
        Dask worker processes per job; each gets ``cores // processes`` threads.
    memory
        Memory of one job (``--mem``, e.g. ``32GB``); each worker gets an equal share as its
        Dask memory limit.
    walltime
        SLURM time limit of a job (``HH:MM:SS`` or ``D-HH:MM:SS``).
    jobs
        Worker jobs ``python -m workflows.slurm`` submits (``slurm_cluster`` submits none).
    job_name
        ``#SBATCH -J``.
    job_extra_directives
        More ``#SBATCH`` options, without the prefix (``--qos=batch``, ``--exclusive``).
    prologue
        Shell lines run before the worker starts (``module load ...``, ``source venv/bin/activate``).
    env
        Variables exported in the job, after the TensorFlow/OpenMP thread settings (which follow
        the worker's threads, as on a LocalCluster) so that they can override them.
    interface
        Network interface of the scheduler and workers (``ib0``); None: the default route's.
    scheduler_port
        Port of the scheduler (0: any free port).
    local_directory
        Worker scratch space on the compute node (``$TMPDIR``); None: Dask's default.
    log_directory
        Folder for the jobs' stdout/stderr files; None: SLURM's default (the submit folder).
    lifetime
        Retire a worker gracefully after this long (``3h50m``), before the walltime kills it;
        None: never.
    python
        The Python that runs the worker on the compute nodes (a shared filesystem path);
        default: this process's interpreter.
    """

    queue: str | None = None
    account: str | None = None
    cores: int = 8
    processes: int = 1
    memory: str = "16GB"
    walltime: str = "04:00:00"
    jobs: int = 1
    job_name: str = "patchhash-worker"
    job_extra_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    interface: str | None = None
    scheduler_port: int = 0
    local_directory: str | None = None
    log_directory: str | None = None
    lifetime: str | None = None
    python: str = sys.executable

    def __post_init__(self) -> None:
        for name in ("cores", "processes", "jobs", "scheduler_port"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"SLURM {name} must be an integer, got {value!r}")
        if self.cores < 1 or self.processes < 1:
            raise ConfigError(f"SLURM cores and processes must be >= 1, got cores={self.cores}, processes={self.processes}")
        if self.cores % self.processes:
            raise ConfigError(f"SLURM cores ({self.cores}) must be a multiple of processes ({self.processes}): "
                              "each worker process gets cores // processes threads")
        if self.jobs < 0:
            raise ConfigError(f"SLURM jobs must be >= 0, got {self.jobs}")
        if not 0 <= self.scheduler_port <= 65535:
            raise ConfigError(f"SLURM scheduler_port must be 0..65535, got {self.scheduler_port}")
        self._check_memory()
        if not isinstance(self.walltime, str) or not _WALLTIME.match(self.walltime):
            raise ConfigError(f"SLURM walltime {self.walltime!r} is not a SLURM time limit; use HH:MM:SS or D-HH:MM:SS")
        for name in ("queue", "account", "job_name", "interface", "local_directory", "log_directory", "lifetime"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _TOKEN.match(value)):
                raise ConfigError(f"SLURM {name} must be one word without spaces, got {value!r}")
        object.__setattr__(self, "job_extra_directives", self._strings("job_extra_directives"))
        object.__setattr__(self, "prologue", self._strings("prologue"))
        for directive in self.job_extra_directives:
            if not directive.startswith("-"):
                raise ConfigError(f"SLURM job_extra_directives: {directive!r} must be an sbatch option such as "
                                  "--qos=batch (without the #SBATCH prefix)")
        self._check_env()
        if not isinstance(self.python, str) or not os.path.isabs(self.python):
            raise ConfigError(f"SLURM python must be an absolute path valid on the compute nodes, got {self.python!r}")

    @property
    def threads_per_worker(self) -> int:
        """Threads of each worker process."""
        return self.cores // self.processes

    def _check_memory(self) -> None:
        from dask.utils import parse_bytes

        try:
            ok = isinstance(self.memory, str) and parse_bytes(self.memory) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"SLURM memory must be a size such as 16GB, got {self.memory!r}")

    def _strings(self, name: str) -> tuple[str, ...]:
        value = getattr(self, name)
        if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"SLURM {name} must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def _check_env(self) -> None:
        if not isinstance(self.env, Mapping):
            raise ConfigError(f"SLURM env must be a mapping of NAME: value, got {self.env!r}")
        env = {}
        for name, value in self.env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ConfigError(f"SLURM env: {name!r} is not an environment variable name")
            if isinstance(value, (dict, list)) or value is None:
                raise ConfigError(f"SLURM env: {name} must be a string or a number, got {value!r}")
            env[name] = str(value)
        object.__setattr__(self, "env", MappingProxyType(env))

    def exports(self) -> list[str]:
        """The ``export`` lines of the job script: thread settings first, then ``env``."""
        threads = str(self.threads_per_worker)
        # TensorFlow sizes its pools from the node's cores at import; pin them to the worker's threads
        variables = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads,
                     "TF_CPP_MIN_LOG_LEVEL": "3", **self.env}
        return [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]


def load_slurm_settings(path: str) -> SlurmSettings:
    """Read a SLURM cluster file (YAML: the :class:`SlurmSettings` fields, dashes or underscores).

    Raises
    ------
    ConfigError
        The file is missing, not a YAML mapping, has an unknown key or a bad value.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            doc = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such SLURM cluster file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a SLURM cluster file is a YAML mapping of key: value lines")
    known = {f.name for f in fields(SlurmSettings)}
    values = {}
    for raw_key, value in doc.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise ConfigError(f"{path}: unknown key {raw_key!r}; valid keys: {', '.join(sorted(known))}")
        if value is not None:
            values[key] = tuple(value) if isinstance(value, list) else value
    try:
        return SlurmSettings(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def slurm_cluster(settings: SlurmSettings) -> "dask_jobqueue.SLURMCluster":  # noqa: F821
    """A ``SLURMCluster`` for ``settings`` with its scheduler started here and no job submitted.

    ``cluster.job_script()`` shows the worker job; ``cluster.scale(jobs=n)`` submits; close it
    (or use it as a context manager) to cancel the jobs.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("SLURM clusters need dask-jobqueue: pip install 'patchhash[cluster]'") from None

    worker_args = ["--lifetime", settings.lifetime, "--lifetime-stagger", "2m"] if settings.lifetime else []
    cluster = SLURMCluster(
        n_workers=0,
        queue=settings.queue, account=settings.account, walltime=settings.walltime,
        cores=settings.cores, processes=settings.processes, memory=settings.memory,
        job_name=settings.job_name, job_extra_directives=list(settings.job_extra_directives),
        job_script_prologue=settings.exports() + list(settings.prologue),
        worker_extra_args=worker_args, interface=settings.interface,
        local_directory=settings.local_directory, log_directory=settings.log_directory,
        python=settings.python,
        scheduler_options={"port": settings.scheduler_port, "dashboard_address": ":0"},
    )
    log.info("SLURM cluster: scheduler %s, jobs of %d x %d thread(s), %s, %s",
             cluster.scheduler_address, settings.processes, settings.threads_per_worker, settings.memory, settings.walltime)
    return cluster


def _write_address(path: str, address: str) -> None:
    """Write atomically, so a script polling for the file never reads half an address."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(address + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m workflows.slurm``: run a SLURM Dask cluster until SIGTERM / Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m workflows.slurm", description=main.__doc__)
    parser.add_argument("--config", required=True, help="SLURM cluster file (YAML), e.g. workflows/deploy/slurm/slurm-cluster.yaml")
    parser.add_argument("--jobs", type=int, help="worker jobs to submit (overrides the file's `jobs`)")
    parser.add_argument("--address-file", help="write the scheduler's address here once it is up")
    parser.add_argument("--dry-run", action="store_true", help="print the worker job script and exit; submit nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import distributed  # noqa: F401  (configures its loggers at import; quiet them after that)

    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"] + ["distributed"]:
        logging.getLogger(name).setLevel(logging.WARNING)  # its INFO chatter would bury the address
    try:
        settings = load_slurm_settings(args.config)
        jobs = settings.jobs if args.jobs is None else args.jobs
        if jobs < 0:
            raise ConfigError(f"--jobs must be >= 0, got {jobs}")
        cluster = slurm_cluster(settings)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with cluster:
        if args.dry_run:
            sys.stdout.write(cluster.job_script())
            return 0
        cluster.scale(jobs=jobs)
        if args.address_file:
            _write_address(args.address_file, cluster.scheduler_address)
        log.info("submitted %d job(s); scheduler %s; dashboard %s; SIGTERM or Ctrl-C cancels them",
                 jobs, cluster.scheduler_address, cluster.dashboard_link)
        while not stop.wait(1.0):
            pass
        log.info("stopping: cancelling the worker jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
