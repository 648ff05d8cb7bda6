"""Job specs (``--config job.yaml``) and the cluster environment variables: validation and precedence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from storage import ConfigError
from workflows.jobspec import COMMANDS, load_job_spec, parse_job_spec

JOBS = Path(__file__).resolve().parent.parent / "workflows" / "jobs"
CLUSTER_ENV = ("PATCHHASH_SCHEDULER", "PATCHHASH_WORKERS", "PATCHHASH_THREADS_PER_WORKER", "PATCHHASH_MEMORY_LIMIT",
               "PATCHHASH_TLS_CA", "PATCHHASH_TLS_CERT", "PATCHHASH_TLS_KEY", "PATCHHASH_WAIT_FOR_LOCK")


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_spec_validates(path):
    command = yaml.safe_load(path.read_text())["command"]
    spec = load_job_spec(str(path), command)
    assert spec.command == command and spec.values
    for key, value in spec.values.items():
        if COMMANDS[command][key].type == "path" and "://" not in value:
            assert os.path.isabs(value), f"{key}: relative paths must be resolved against the job file's folder"


def test_examples_cover_index_query_and_a_cluster():
    commands = {yaml.safe_load(p.read_text())["command"] for p in JOBS.glob("*.yaml")}
    assert {"index", "query"} <= commands
    cluster = load_job_spec(str(JOBS / "cluster-index.yaml"), "index").values
    assert cluster["scheduler"].startswith("tls://") and cluster["tls_ca"] == str(JOBS / "certs" / "ca.pem")
    assert cluster["model"] == "icons-photos", "built-in model names are not paths"


def test_schema_lists_exactly_each_commands_options():
    """Every CLI option can be set in a job spec, and the spec knows no option the CLI lacks."""
    import typer

    from workflows.cli import app

    group = typer.main.get_command(app)
    for command, fields in COMMANDS.items():
        params = {p.name for p in group.commands[command].params} - {"config", "ctx"}
        assert set(fields) == params, command


def test_cli_options_and_job_spec_keys_are_built_from_the_settings_dataclasses():
    import typer

    from workflows.bench import BenchSettings
    from workflows.cli import app
    from workflows.cluster import ClusterSettings
    from workflows.evaluate import EvaluateSettings
    from workflows.index import IndexSettings
    from workflows.options import options_of
    from workflows.query import QuerySettings

    group = typer.main.get_command(app)
    for command, classes in (("index", (IndexSettings, ClusterSettings)), ("query", (QuerySettings, ClusterSettings)),
                             ("evaluate", (EvaluateSettings, ClusterSettings)), ("bench", (BenchSettings, ClusterSettings))):
        params = {p.name: p for p in group.commands[command].params}
        for declared in (o for cls in classes for o in options_of(cls)):
            if declared.name == "in_process_max" and command in ("evaluate", "bench"):
                assert declared.name not in COMMANDS[command] and declared.name not in params  # they measure their cluster
                continue
            assert COMMANDS[command][declared.name] is declared, (command, declared.name)
            assert params[declared.name].help.startswith(declared.help), (command, declared.name)
    assert options_of(EvaluateSettings, "vote_budget") == options_of(QuerySettings, "vote_budget"), "declared once"


def test_a_new_settings_field_is_a_cli_option_a_job_spec_key_and_a_check(tmp_path, monkeypatch):
    from dataclasses import dataclass

    import typer

    from workflows import cli
    from workflows.options import check_options, option

    @dataclass(frozen=True)
    class ProbeSettings:
        depth: int = option(3, "How deep to look.", minimum=1, example="3")

        def __post_init__(self):
            check_options(self)

    got = {}
    monkeypatch.setitem(cli.JOB_SPECS, "probe", None)  # the command below registers its job spec; undone after the test
    probe_app = typer.Typer(add_completion=False)

    @probe_app.command()
    @cli.options(settings=ProbeSettings, config=cli.CONFIG)
    def probe(settings, config):
        got["settings"] = settings

    param = {p.name: p for p in typer.main.get_command(probe_app).params}["depth"]
    assert (param.default, param.help) == (3, "How deep to look.")
    assert COMMANDS["probe"]["depth"].minimum == 1

    spec = tmp_path / "probe.yaml"
    spec.write_text("depth: 7\n")
    assert CliRunner().invoke(probe_app, ["--config", str(spec)]).exit_code == 0 and got["settings"].depth == 7
    assert CliRunner().invoke(probe_app, ["--config", str(spec), "--depth", "5"]).exit_code == 0 and got["settings"].depth == 5
    spec.write_text("depth: 0\n")
    assert "key 'depth' must be >= 1, e.g. `depth: 3`; got 0" in str(CliRunner().invoke(probe_app, ["--config", str(spec)]).exception)
    assert str(CliRunner().invoke(probe_app, ["--depth", "0"]).exception) == "--depth must be >= 1, got 0"


def test_values_take_the_command_lines_form(tmp_path):
    text = """
        command: evaluate
        index: s3://bucket/idx
        queries: q/*.png
        labels: ../labels.npy
        k: [1, 10]
        modes: seed
        baselines: []
        thresholds: "1,3"
        max-bucket-fraction: 1
        storage_options: {anon: true, client_kwargs: {region_name: eu-west-1}}
        workers: 2
        memory-limit: 4000000000
        plot:
    """
    values = parse_job_spec(text, "evaluate", base_dir=str(tmp_path / "jobs")).values
    assert values["index"] == "s3://bucket/idx"
    assert values["queries"] == str(tmp_path / "jobs" / "q" / "*.png")
    assert values["labels"] == str(tmp_path / "labels.npy")
    assert (values["k"], values["modes"], values["baselines"], values["thresholds"]) == ("1,10", "seed", "none", "1,3")
    assert values["max_bucket_fraction"] == 1.0 and values["memory_limit"] == "4000000000"
    assert json.loads(values["storage_options"]) == {"anon": True, "client_kwargs": {"region_name": "eu-west-1"}}
    assert "plot" not in values, "an empty value means the default"


@pytest.mark.parametrize(
    "command, text, message",
    [
        ("index", "workerz: 2", "unknown key 'workerz' for `patchhash index`; valid keys: command, append_only, compact, corpus"),
        ("index", "workers: four", "key 'workers' must be an integer, e.g. `workers: 4`; got 'four'"),
        ("index", "workers: true", "key 'workers' must be an integer"),
        ("index", "shard-size: 0", "key 'shard_size' must be >= 1 and <= 1e+07, e.g. `shard_size: 10000`; got 0"),
        ("index", "threads_per_worker: 0", "key 'threads_per_worker' must be >= 1"),
        ("index", "wait-for-lock: -1", "key 'wait_for_lock' must be >= 0"),
        ("index", "strict: yes please", "key 'strict' must be true or false"),
        ("index", "storage_options: [1, 2]", "key 'storage_options' must be a mapping"),
        ("index", "corpus: 12", "key 'corpus' must be a non-empty string"),
        ("index", "shard-size: 10\nshard_size: 20", "key 'shard_size' is given twice"),
        ("index", "command: query", "this job spec is for `patchhash query`, not `patchhash index`"),
        ("index", "- corpus: x", "a job spec is a YAML mapping"),
        ("index", "corpus: [unclosed", "not valid YAML"),
        ("query", "mode: fast", "key 'mode' must be one of default, seed"),
        ("query", "max_bucket_fraction: 0", "key 'max_bucket_fraction' must be > 0 and <= 1"),
        ("query", "corpus: x", "unknown key 'corpus' for `patchhash query`"),
        ("evaluate", "k: [1, ten]", "key 'k' must be a list of integers"),
        ("evaluate", "modes: [seed, turbo]", "key 'modes' must be a list of default, seed"),
        ("bench", "repeats: 0", "key 'repeats' must be >= 1"),
    ],
)
def test_bad_specs_name_the_file_the_key_and_the_fix(tmp_path, command, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_job_spec(str(path), command)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_missing_job_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such job spec file"):
        load_job_spec(str(tmp_path / "absent.yaml"), "index")


# --------------------------------------------------------------------------- precedence, through the CLI


@pytest.fixture
def captured(monkeypatch):
    """Replace the jobs behind the CLI by recorders of what they were given."""
    import workflows.bench
    import workflows.evaluate
    import workflows.index
    import workflows.query

    calls: dict[str, tuple] = {}

    class Stop(Exception):
        pass

    def recorder(name):
        def record(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise Stop
        return record

    for module, name in ((workflows.index, "index"), (workflows.query, "query"), (workflows.evaluate, "evaluate"), (workflows.bench, "bench")):
        monkeypatch.setattr(module, name, recorder(name))
    for var in CLUSTER_ENV:
        monkeypatch.delenv(var, raising=False)
    return calls


def _invoke(*args, env=None):
    from workflows.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def test_precedence_flag_over_env_over_spec_over_default(tmp_path, captured):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "command: index\ncorpus: c.npy\nindex: s3://b/idx\nscheduler: tcp://spec:8786\nworkers: 3\n"
        "memory-limit: 2GB\nshard-size: 100\nwait-for-lock: 60\nstorage-options: {anon: true}\n"
    )
    env = {"PATCHHASH_WORKERS": "5", "PATCHHASH_MEMORY_LIMIT": "8GB"}
    _invoke("index", "--config", str(spec), "--shard-size", "200", "--memory-limit", "1GB", env=env)
    (corpus, index_url, model, settings, cluster, options), kwargs = captured["index"]
    assert (corpus, index_url, model) == (str(tmp_path / "c.npy"), "s3://b/idx", None)
    assert settings.shard_size == 200            # flag over spec
    assert cluster.memory_limit == "1GB"         # flag over env over spec
    assert cluster.workers == 5                  # env over spec
    assert cluster.scheduler == "tcp://spec:8786" and kwargs["wait_for_lock"] == 60.0  # spec over default
    assert cluster.threads_per_worker == 1 and settings.partitions is None          # defaults
    assert options == {"anon": True}


def test_cluster_settings_from_environment_variables(tmp_path, captured):
    env = {"PATCHHASH_SCHEDULER": "tcp://env:8786", "PATCHHASH_THREADS_PER_WORKER": "2", "PATCHHASH_WAIT_FOR_LOCK": "30"}
    _invoke("index", "--corpus", "c", "--index", "i", env=env)
    (_, _, _, _, cluster, _), kwargs = captured["index"]
    assert (cluster.scheduler, cluster.threads_per_worker, kwargs["wait_for_lock"]) == ("tcp://env:8786", 2, 30.0)
    _invoke("query", "--index", "i", "--queries", "q", "--out", "o", env={"PATCHHASH_WORKERS": "4"})
    assert captured["query"][0][4].workers == 4


def test_query_evaluate_and_bench_take_a_job_spec(tmp_path, captured):
    (tmp_path / "q.yaml").write_text("command: query\nindex: idx\nqueries: q.npy\nout: r.csv\nk: 5\nmode: seed\nshortlist: 50\n")
    _invoke("query", "--config", str(tmp_path / "q.yaml"), "--k", "7")
    (index_url, queries, out, settings, _, _), _ = captured["query"]
    assert (index_url, queries, out) == (str(tmp_path / "idx"), str(tmp_path / "q.npy"), str(tmp_path / "r.csv"))
    assert (settings.k, settings.mode, settings.shortlist) == (7, "seed", 50)

    (tmp_path / "e.yaml").write_text("index: idx\nqueries: q.npy\nlabels: l.npy\nk: [1, 5]\nmodes: [default]\nbaselines: [lsh-64]\n")
    _invoke("evaluate", "--config", str(tmp_path / "e.yaml"))
    settings = captured["evaluate"][0][4]
    assert (settings.ks, settings.modes, settings.baselines) == ((1, 5), ("default",), ("lsh-64",))

    (tmp_path / "b.yaml").write_text("index: idx\nqueries: q.npy\nrepeats: 2\nmodes: seed\n")
    _invoke("bench", "--config", str(tmp_path / "b.yaml"))
    settings = captured["bench"][0][2]
    assert (settings.repeats, settings.modes) == (2, ("seed",))


def test_required_options_missing_from_both_flag_and_spec(tmp_path, captured):
    (tmp_path / "job.yaml").write_text("command: index\ncorpus: c.npy\n")
    result = _invoke("index", "--config", str(tmp_path / "job.yaml"))
    assert isinstance(result.exception, ConfigError) and "needs --index" in str(result.exception)
    assert "index" not in captured
