"""Logs for machines: one whole line per event with its run id; progress as timestamped lines
(done/total, rate, ETA) when stderr is no terminal; ``--log-format json``."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest

CLI = [sys.executable, "-m", "workflows.cli"]
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) run=([0-9a-f]{16}) \S+: ")


def run_logged(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``patchhash ...`` with stderr to a file (not a terminal); its stderr lines."""
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        result = subprocess.run([*CLI, *args], stdout=subprocess.PIPE, stderr=err, text=True, timeout=600)
    return result, log.read_text().splitlines()


def test_query_json_lines_carry_one_run_id_and_progress_fields(tmp_path, fmnist_train, make_index, tcp_scheduler):
    _, url = make_index(fmnist_train[:150])
    np.save(tmp_path / "q.npy", fmnist_train[150:170, :, :, 0])
    result, lines = run_logged(tmp_path, "query", "--index", url, "--queries", str(tmp_path / "q.npy"), "--out",
                               str(tmp_path / "hits.parquet"), "--block-size", "5", "--log-format", "json",
                               "--progress-interval", "0", "--scheduler", tcp_scheduler)
    assert result.returncode == 0, lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len({r["run_id"] for r in records}) == 1 and re.fullmatch(r"[0-9a-f]{16}", records[0]["run_id"])
    for r in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) and r["command"] == "query"
        assert r["level"] in ("DEBUG", "INFO", "WARNING") and r["logger"] and r["message"]
    progress = [r for r in records if r["logger"] == "patchhash.progress"]
    assert progress and all(r["stage"] == "query" and r["total"] == 4 and r["unit"] == "block" for r in progress)
    assert [r["done"] for r in progress][-1] == 4 and all(r["rate"] >= 0 for r in progress)
    assert all(r["eta_s"] is None or r["eta_s"] >= 0 for r in progress)


def test_text_lines_and_failure_lines(tmp_path, make_index, fmnist_train):
    import shutil

    _, url = make_index(fmnist_train[:150])
    index = tmp_path / "index"
    shutil.copytree(url, index)
    result, lines = run_logged(tmp_path, "gc", "--index", str(index), "--min-age", "0", "--dry-run")
    assert result.returncode == 0 and lines, lines
    ids = {TEXT_LINE.match(line).group(2) for line in lines}
    assert len(ids) == 1

    result, lines = run_logged(tmp_path, "gc", "--index", str(tmp_path / "missing"), "--log-format", "json")
    assert result.returncode == 1
    last = json.loads(lines[-1])
    assert last["level"] == "ERROR" and last["message"].startswith("patchhash: error: ") and last["command"] == "gc"
    assert len({json.loads(line)["run_id"] for line in lines}) == 1

    result, lines = run_logged(tmp_path, "gc", "--index", str(tmp_path / "missing"))
    assert result.returncode == 1 and lines[-1].startswith("patchhash: error: "), "text: the line scripts look for"


def test_progress_lines_every_interval_and_at_the_end(monkeypatch, caplog):
    import workflows.logformat as logformat

    clock = [100.0]
    monkeypatch.setattr(logformat.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logformat.PROGRESS_LOGGER)
    with logformat.ProgressLog(10, "encode", "shard", interval=30) as bar:
        for _ in range(10):
            clock[0] += 7
            bar.update(1)
    fields = [r.fields for r in caplog.records]
    assert [f["done"] for f in fields] == [5, 10]  # at 35 s (30 s passed), then at the end (63 s: 28 s since)
    assert fields[0]["rate"] == pytest.approx(5 / 35, rel=1e-3) and fields[0]["eta_s"] == pytest.approx(35.0)
    assert fields[-1]["eta_s"] == 0 and fields[-1]["total"] == 10
    assert caplog.records[0].getMessage() == "encode: 5/10 shard (50%), 0.143 shard/s, ETA 35 s"


def test_a_record_is_one_line_written_with_one_write(monkeypatch, tmp_path):
    import workflows.logformat as logformat

    run = logformat.RunContext("0123456789abcdef", "index")
    record = logging.LogRecord("workflows.index", logging.WARNING, __file__, 1, "two\nlines %d", (2,), None)
    text = logformat.LineFormatter(run).format(record)
    assert TEXT_LINE.match(text) and text.endswith("workflows.index: two\\nlines 2") and "\n" not in text
    as_json = json.loads(logformat.LineFormatter(logformat.RunContext("0123456789abcdef", "index", "json")).format(record))
    assert as_json["message"] == "two\nlines 2" and as_json["run_id"] == "0123456789abcdef"

    writes = []
    real_write = logformat.os.write
    monkeypatch.setattr(logformat.os, "write", lambda fd, data: writes.append(bytes(data)) or real_write(fd, data))
    with open(tmp_path / "log", "a") as stream:
        logformat.write_line(stream, text + "\n")
    assert writes == [(text + "\n").encode()]


_WRITER = """
import logging, sys
from workflows.logformat import MonitorSettings, start_run
start_run("index", MonitorSettings(log_format=sys.argv[1]))
log = logging.getLogger("writer")
for i in range(3000):
    log.info("line %d %s", i, "x" * 300)
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_two_runs_appending_to_one_log_never_splice_a_line(tmp_path, fmt):
    log = tmp_path / "shared.log"
    with open(log, "a") as a, open(log, "a") as b:
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, fmt], stderr=f) for f in (a, b)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 6000
    runs = [json.loads(line)["run_id"] for line in lines] if fmt == "json" else [TEXT_LINE.match(line).group(2) for line in lines]
    assert len(set(runs)) == 2 and all(line.endswith("x" * 300 + ("\"}" if fmt == "json" else "")) for line in lines)


_WORKERS = """
import logging, sys
from distributed import Client, LocalCluster
from workflows.logformat import MonitorSettings, current_run
from workflows.runtime import setup_logging
from workflows.worker_log import QuietWorkerLog

def warn():
    logging.getLogger("storage.corpus").warning("unreadable image in a worker")
    logging.getLogger("distributed.worker").warning("a worker's own warning")

if __name__ == "__main__":
    setup_logging(False, MonitorSettings(log_format="json"), "index")
    run = current_run()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(QuietWorkerLog())
        client.run(warn)
    print(run.run_id)
"""


def test_worker_processes_log_the_jobs_lines(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS)
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        result = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=err, text=True, timeout=120)
    assert result.returncode == 0, log.read_text()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["run_id"] for r in records} == {result.stdout.strip()}
    assert {"unreadable image in a worker", "a worker's own warning"} <= {r["message"] for r in records}
