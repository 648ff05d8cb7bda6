"""The deployment recipes of workflows/deploy/: cron, systemd, Kubernetes, SLURM (issue 8).

Each recipe is checked as far as a machine without a scheduler daemon can: files parse and
carry the keys that matter, what is shared between files agrees, job specs embedded in them
pass patchhash's own validation, ``systemd-analyze verify`` where it exists, and the SLURM
cluster is built from the example config and its job script inspected; with fake ``sbatch`` /
``scancel`` the nightly SLURM script runs end to end against a real Dask worker.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from storage import ConfigError
from workflows.jobspec import load_job_spec, parse_job_spec
from workflows.slurm import SlurmSettings, load_slurm_settings, main, slurm_cluster

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "workflows" / "deploy"
CRON = DEPLOY / "cron" / "patchhash-nightly.cron"
SERVICE = DEPLOY / "systemd" / "patchhash-nightly.service"
TIMER = DEPLOY / "systemd" / "patchhash-nightly.timer"
ENV_EXAMPLE = DEPLOY / "systemd" / "patchhash.env.example"
DASK_CLUSTER = DEPLOY / "kubernetes" / "dask-cluster.yaml"
CRONJOB = DEPLOY / "kubernetes" / "nightly-cronjob.yaml"
SLURM_CONFIG = DEPLOY / "slurm" / "slurm-cluster.yaml"
RUN_NIGHTLY = DEPLOY / "slurm" / "run-nightly.sh"
NIGHTLY_COMMAND = re.compile(r"(^|/)patchhash index --config (\S+\.yaml)\b")
ENV_VARS = {"PATCHHASH_SCHEDULER", "PATCHHASH_WORKERS", "PATCHHASH_THREADS_PER_WORKER", "PATCHHASH_MEMORY_LIMIT",
            "PATCHHASH_TLS_CA", "PATCHHASH_TLS_CERT", "PATCHHASH_TLS_KEY", "PATCHHASH_WAIT_FOR_LOCK"}

# (lowest, highest) of the five crontab fields: minute, hour, day of month, month, day of week
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def cron_field_ok(text: str, index: int) -> bool:
    """Whether ``text`` is a valid crontab field number ``index`` (lists, ranges, steps, names)."""
    low, high = _CRON_RANGES[index]
    names = _CRON_NAMES.get(index, [])

    def value(token: str) -> int | None:
        if token.isdigit():
            number = int(token)
            return number if low <= number <= high else None
        if token.lower() in names:
            return names.index(token.lower()) + (1 if index == 3 else 0)
        return None

    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) < 1):
            return False
        if base == "*":
            continue
        start, _, end = base.partition("-")
        first, last = value(start), value(end) if end else None
        if first is None or (end and (last is None or last < first)):
            return False
    return True


def cron_schedule_ok(expression: str) -> bool:
    fields = expression.split()
    return len(fields) == 5 and all(cron_field_ok(f, i) for i, f in enumerate(fields))


def test_cron_field_check_itself():
    assert cron_schedule_ok("15 2 * * *") and cron_schedule_ok("*/10 0-6,22 1 jan-mar mon-fri")
    for bad in ("60 2 * * *", "15 24 * * *", "15 2 0 * *", "15 2 * 13 *", "15 2 * * 8", "15 2 * *", "5-1 * * * *", "*/0 * * * *"):
        assert not cron_schedule_ok(bad), bad


# --- cron ------------------------------------------------------------------------------------


def _crontab_entries() -> list[str]:
    lines = [line.strip() for line in CRON.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)]


def test_crontab_line_schedules_the_nightly_index():
    (entry,) = _crontab_entries()
    fields = entry.split(None, 5)
    assert cron_schedule_ok(" ".join(fields[:5])), fields[:5]
    command = fields[5]
    match = NIGHTLY_COMMAND.search(command)
    assert match and os.path.isabs(match.group(2)), "runs `patchhash index --config /abs/job.yaml`"
    assert re.search(r">> ?\S+\.log 2>&1$", command), "appends stdout and stderr to a log file"
    assert "flock" not in command, "patchhash index holds its own lock"
    assert "%" not in command, "an unescaped % ends a crontab command"
    assert "/etc/patchhash/patchhash.env" in command and "set -a" in command, "settings and secrets from the env file"
    assert "SHELL=/bin/bash" in CRON.read_text()


# --- systemd ---------------------------------------------------------------------------------


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_systemd_service_and_timer_have_the_required_keys():
    service, timer = _unit(SERVICE), _unit(TIMER)
    assert service["Service"]["Type"] == "oneshot"
    assert NIGHTLY_COMMAND.search(service["Service"]["ExecStart"])
    assert service["Service"]["EnvironmentFile"] == "/etc/patchhash/patchhash.env"
    assert "network-online.target" in service["Unit"]["After"]
    text = SERVICE.read_text()
    assert not re.search(r"^Environment=", text, re.M), "no inline environment: secrets live in the EnvironmentFile"
    assert "AWS_" not in "".join(line for line in text.splitlines() if not line.startswith("#"))
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["RandomizedDelaySec"] and timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Unit"] == SERVICE.name
    assert timer["Install"]["WantedBy"] == "timers.target"
    (entry,) = _crontab_entries()
    assert NIGHTLY_COMMAND.search(entry).group(2) == NIGHTLY_COMMAND.search(service["Service"]["ExecStart"]).group(2), \
        "cron and systemd run the same job spec"


def test_env_example_holds_only_known_settings_and_placeholders():
    keys = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S*)", line)
        assert match, f"not a KEY=value line (systemd and `set -a; .` both need that): {line!r}"
        keys[match.group(1)] = match.group(2)
    commented = set(re.findall(r"^#(PATCHHASH_[A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert {k for k in keys | dict.fromkeys(commented) if k.startswith("PATCHHASH_")} <= ENV_VARS
    assert keys["AWS_SECRET_ACCESS_KEY"] == "REPLACE_ME", "the example never carries a real secret"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path):
    # verify checks that ExecStart's program exists: point it at this checkout's patchhash
    patchhash = shutil.which("patchhash", path=os.path.dirname(sys.executable)) or sys.executable
    (tmp_path / SERVICE.name).write_text(SERVICE.read_text().replace("/opt/patchhash/.venv/bin/patchhash", patchhash))
    shutil.copy(TIMER, tmp_path / TIMER.name)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", SERVICE.name, TIMER.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"Unknown key|Failed to parse|ignoring|Refusing", done.stderr), done.stderr
    calendar = subprocess.run(["systemd-analyze", "calendar", _unit(TIMER)["Timer"]["OnCalendar"]],
                              capture_output=True, text=True, timeout=30)
    assert calendar.returncode == 0 and "Next elapse" in calendar.stdout, calendar.stderr


# --- Kubernetes ------------------------------------------------------------------------------


def _docs(path: Path) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc.get("kind")
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    return {doc["kind"]: doc for doc in docs}


def _container(pod_spec: dict, name: str) -> dict:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == name]
    assert container["image"], name
    return container


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _secrets(container: dict) -> set[str]:
    return {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}


def test_dask_cluster_resource_is_a_valid_operator_spec():
    cluster = _docs(DASK_CLUSTER)["DaskCluster"]
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    assert {"scheduler", "worker"} <= set(spec) and spec.get("idleTimeout", 0) == 0, "stays up between runs"
    scheduler = _container(spec["scheduler"]["spec"], "scheduler")
    assert scheduler["args"][0] in ("dask-scheduler", "dask") and "--host" in scheduler["args"]
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    service = spec["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    for port in service["ports"]:
        assert port["targetPort"] in ports, "the service targets a named port of the scheduler"
    assert {"tcp-comm": 8786} == {p["name"]: p["port"] for p in service["ports"] if p["name"] == "tcp-comm"}

    worker_group = spec["worker"]
    assert isinstance(worker_group["replicas"], int) and worker_group["replicas"] >= 1
    worker = _container(worker_group["spec"], "worker")
    assert worker["image"] == scheduler["image"], "scheduler and workers run the same patchhash image"
    args = worker["args"]
    assert args[0] == "dask-worker" and args[args.index("--name") + 1] == "$(DASK_WORKER_NAME)"
    threads = args[args.index("--nthreads") + 1]
    assert _env(worker)["TF_NUM_INTRAOP_THREADS"] == threads == _env(worker)["OMP_NUM_THREADS"]
    assert worker["resources"]["limits"]["cpu"] == threads, "one core per worker thread"
    assert _secrets(worker), "workers read storage with credentials from a Secret"
    assert "AWS_SECRET_ACCESS_KEY" not in _env(worker)


def test_dask_cluster_matches_the_operators_own_template():
    kubecluster = pytest.importorskip("dask_kubernetes.operator.kubecluster.kubecluster",
                                      reason="dask-kubernetes is not installed (optional)")
    ours = _docs(DASK_CLUSTER)["DaskCluster"]
    theirs = kubecluster.make_cluster_spec(ours["metadata"]["name"], n_workers=ours["spec"]["worker"]["replicas"])
    assert theirs["apiVersion"] == ours["apiVersion"] and theirs["kind"] == ours["kind"]
    assert set(theirs["spec"]) <= set(ours["spec"])
    assert set(theirs["spec"]["scheduler"]) <= set(ours["spec"]["scheduler"])
    assert set(theirs["spec"]["worker"]) <= set(ours["spec"]["worker"])
    assert ours["spec"]["scheduler"]["service"]["selector"] == theirs["spec"]["scheduler"]["service"]["selector"]


def test_cronjob_runs_patchhash_index_on_the_dask_cluster():
    cluster = _docs(DASK_CLUSTER)["DaskCluster"]
    docs = _docs(CRONJOB)
    assert set(docs) == {"ConfigMap", "CronJob"}
    cronjob, configmap = docs["CronJob"], docs["ConfigMap"]
    assert cronjob["apiVersion"] == "batch/v1" and configmap["apiVersion"] == "v1"
    spec = cronjob["spec"]
    assert cron_schedule_ok(spec["schedule"]), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["patchhash", "index", "--config"] and len(command) == 4

    # the job spec file is the ConfigMap's key, mounted where the command reads it
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = [v for v in pod["volumes"] if v["name"] in mount]
    assert os.path.dirname(command[3]) == mount[volume["name"]]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    keys = {item["key"]: item["path"] for item in volume["configMap"].get("items", [])} or \
        {k: k for k in configmap["data"]}
    assert os.path.basename(command[3]) in keys.values()

    # PATCHHASH_SCHEDULER is the service the operator creates for the DaskCluster
    address = _env(container)["PATCHHASH_SCHEDULER"]
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    port = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}["tcp-comm"]
    assert address == f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:{port}"
    assert cronjob["metadata"]["namespace"] == configmap["metadata"]["namespace"] == namespace
    assert container["image"] == _container(cluster["spec"]["worker"]["spec"], "worker")["image"], \
        "client and workers must run the same patchhash"
    assert _secrets(container) == _secrets(_container(cluster["spec"]["worker"]["spec"], "worker"))
    assert not [e for e in container.get("env", []) if "SECRET" in e["name"]], "no inline secrets"


def test_configmap_job_spec_passes_patchhash_validation():
    configmap = _docs(CRONJOB)["ConfigMap"]
    (text,) = configmap["data"].values()
    spec = parse_job_spec(text, "index", source="ConfigMap patchhash-jobs")
    assert spec.values["corpus"].startswith("s3://") and spec.values["index"].startswith("s3://")
    assert spec.values["wait_for_lock"] > 0
    assert "scheduler" not in spec.values, "the scheduler comes from PATCHHASH_SCHEDULER in the CronJob"
    with pytest.raises(ConfigError, match="unknown key"):
        parse_job_spec(text + "schedular: tcp://x:8786\n", "index")


def test_recipes_run_the_shipped_nightly_job_spec():
    spec = load_job_spec(str(ROOT / "workflows" / "jobs" / "nightly-index.yaml"), "index")
    configmap = yaml.safe_load(next(iter(_docs(CRONJOB)["ConfigMap"]["data"].values())))
    shipped = yaml.safe_load((ROOT / "workflows" / "jobs" / "nightly-index.yaml").read_text())
    for key in ("command", "corpus", "index", "storage-options", "max-delete-fraction", "gc", "keep-versions", "min-age",
                "wait-for-lock", "strict"):
        assert configmap[key] == shipped[key], key
    assert spec.values["wait_for_lock"] > 0


# --- SLURM -----------------------------------------------------------------------------------

needs_jobqueue = pytest.mark.skipif(importlib.util.find_spec("dask_jobqueue") is None,
                                    reason="dask-jobqueue is not installed (extra `cluster`)")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` runs the job script in the background in its own process group; ``scancel`` kills it."""
    bin_dir, state = tmp_path / "fake-slurm-bin", tmp_path / "fake-slurm"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        n=$(ls {state} | grep -c '^job-.*\\.sh$' || true)
        cp "$1" {state}/job-$n.sh
        setsid bash {state}/job-$n.sh > {state}/job-$n.log 2>&1 < /dev/null &
        echo $! >> {state}/pids
        echo "Submitted batch job $!"
        """))
    (bin_dir / "scancel").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "$@" >> {state}/cancelled
        kill -TERM -- -"$1" 2>/dev/null || true
        """))
    for tool in ("sbatch", "scancel"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield state
    pids = (state / "pids").read_text().split() if (state / "pids").exists() else []
    for pid in pids:  # whatever scancel missed
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@needs_jobqueue
def test_slurm_cluster_from_the_example_config_renders_the_job_script(tmp_path, monkeypatch, fake_slurm):
    monkeypatch.chdir(tmp_path)  # log-directory is relative to where the cluster starts
    settings = load_slurm_settings(str(SLURM_CONFIG))
    assert settings.threads_per_worker == 4
    with slurm_cluster(settings) as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    assert not (fake_slurm / "pids").exists(), "building the cluster submits nothing"
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in ("#SBATCH -p cpu", "#SBATCH -A imaging", "#SBATCH -t 06:00:00", "#SBATCH --cpus-per-task=16",
                     "#SBATCH --mem=60G", "#SBATCH -J patchhash-worker", "#SBATCH --qos=batch", "#SBATCH --exclusive",
                     "#SBATCH -o slurm-logs/patchhash-worker-%J.out"):
        assert expected in sbatch, (expected, sbatch)
    (worker,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    args = worker.split()
    assert args[:4] == [sys.executable, "-m", "distributed.cli.dask_worker", address]
    option = {name: args[args.index(name) + 1] for name in ("--nthreads", "--nworkers", "--memory-limit",
                                                             "--lifetime", "--local-directory")}
    assert option["--nthreads"] == "4" and option["--nworkers"] == "4"
    from dask.utils import parse_bytes
    assert parse_bytes(option["--memory-limit"]) == pytest.approx(16e9, rel=0.01), "64GB shared by 4 workers"
    assert option["--lifetime"] == "5h50m" and option["--local-directory"] == "$TMPDIR"
    lines = script.splitlines()
    for export in ("export TF_NUM_INTRAOP_THREADS=4", "export TF_NUM_INTEROP_THREADS=1", "export OMP_NUM_THREADS=4",
                   "export AWS_DEFAULT_REGION=eu-west-1", "module load python/3.11 || true"):
        assert export in lines and lines.index(export) < lines.index(worker), export
    assert (tmp_path / "slurm-logs").is_dir()


@pytest.mark.parametrize("values, message", [
    ({"cores": 6, "processes": 4}, "multiple of processes"),
    ({"walltime": "6 hours"}, "not a SLURM time limit"),
    ({"memory": "lots"}, "size such as 16GB"),
    ({"job_extra_directives": ("#SBATCH --qos=batch",)}, "without the #SBATCH prefix"),
    ({"env": {"BAD-NAME": "1"}}, "not an environment variable name"),
    ({"queue": "cpu gpu"}, "one word"),
    ({"python": "python3"}, "absolute path"),
    ({"jobs": -1}, "jobs must be >= 0"),
])
def test_slurm_settings_are_validated_up_front(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SlurmSettings(**values)


def test_slurm_cluster_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("queue: cpu\ncors: 8\n")
    with pytest.raises(ConfigError, match=r"cluster\.yaml: unknown key 'cors'"):
        load_slurm_settings(str(path))
    path.write_text("walltime: 90 minutes\n")
    with pytest.raises(ConfigError, match=r"cluster\.yaml: SLURM walltime"):
        load_slurm_settings(str(path))
    with pytest.raises(ConfigError, match="no such SLURM cluster file"):
        load_slurm_settings(str(tmp_path / "missing.yaml"))


@needs_jobqueue
def test_slurm_dry_run_prints_the_job_script_and_submits_nothing(tmp_path, monkeypatch, capsys, fake_slurm):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(SLURM_CONFIG), "--dry-run"]) == 0
    assert "#SBATCH -p cpu" in capsys.readouterr().out
    assert not (fake_slurm / "pids").exists()


@needs_jobqueue
def test_run_nightly_script_on_fake_slurm_runs_the_index_command_on_a_real_worker(tmp_path, fake_slurm):
    """run-nightly.sh: cluster up, worker job 'submitted', patchhash pointed at it, jobs cancelled after."""
    config = tmp_path / "cluster.yaml"
    config.write_text("cores: 1\nprocesses: 1\nmemory: 1GB\nwalltime: '00:10:00'\njobs: 1\n"
                      "env: {PATCHHASH_TEST_MARK: on-the-worker}\n")
    report = tmp_path / "stub-report.json"
    stub = tmp_path / "patchhash"  # stands in for `patchhash index`: connects and runs a task
    stub.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        from distributed import Client
        with Client(os.environ["PATCHHASH_SCHEDULER"], timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            env = client.submit(lambda: {{k: os.environ.get(k) for k in ("PATCHHASH_TEST_MARK", "TF_NUM_INTRAOP_THREADS")}}).result()
            nthreads = list(client.nthreads().values())
        json.dump({{"argv": sys.argv[1:], "scheduler": os.environ["PATCHHASH_SCHEDULER"], "env": env, "nthreads": nthreads}},
                  open({str(report)!r}, "w"))
        """))
    stub.chmod(0o755)
    env = dict(os.environ, PATCHHASH_HOME=str(ROOT), PATCHHASH_PYTHON=sys.executable, PATCHHASH_BIN=str(stub),
               PATCHHASH_SLURM_CONFIG=str(config), PATCHHASH_JOB=str(ROOT / "workflows/jobs/nightly-index.yaml"),
               PATCHHASH_CLUSTER_TIMEOUT="60", TMPDIR=str(tmp_path))
    done = subprocess.run(["bash", str(RUN_NIGHTLY)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["argv"] == ["index", "--config", str(ROOT / "workflows/jobs/nightly-index.yaml")]
    assert result["scheduler"].startswith("tcp://")
    assert result["env"] == {"PATCHHASH_TEST_MARK": "on-the-worker", "TF_NUM_INTRAOP_THREADS": "1"}
    assert result["nthreads"] == [1]
    (pid,) = (fake_slurm / "pids").read_text().split()
    assert (fake_slurm / "cancelled").read_text().split() == [pid], "the worker job was cancelled on exit"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the worker job's processes outlived the script")


def test_shell_scripts_and_the_crontab_command_parse():
    done = subprocess.run(["bash", "-n", str(RUN_NIGHTLY)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert os.access(RUN_NIGHTLY, os.X_OK)
    (entry,) = _crontab_entries()
    done = subprocess.run(["bash", "-n", "-c", entry.split(None, 5)[5]], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"the crontab command is not valid bash (SHELL=/bin/bash): {done.stderr}"
