#!/usr/bin/env bash
# Nightly patchhash index on SLURM: start a SLURMCluster (workflows.slurm), run
# `patchhash index` against its scheduler, then cancel the worker jobs.
# Run it on a login node (from cron) or as a small job of its own:
#   sbatch -c 2 --mem=8G -t 08:00:00 workflows/deploy/slurm/run-nightly.sh
# Settings (environment): PATCHHASH_HOME (the checkout with its .venv; default: this
# file's checkout, or the sbatch submit folder), PATCHHASH_SLURM_CONFIG (cluster file),
# PATCHHASH_JOB (job spec), PATCHHASH_CLUSTER_TIMEOUT (seconds to wait for the scheduler).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# under sbatch this file is a copy in SLURM's spool folder; the submit folder is the checkout
home=${PATCHHASH_HOME:-${SLURM_SUBMIT_DIR:-$(cd "$here/../../.." && pwd)}}
python=${PATCHHASH_PYTHON:-$home/.venv/bin/python}
patchhash=${PATCHHASH_BIN:-$(dirname "$python")/patchhash}
cluster_config=${PATCHHASH_SLURM_CONFIG:-$home/workflows/deploy/slurm/slurm-cluster.yaml}
job=${PATCHHASH_JOB:-$home/workflows/jobs/nightly-index.yaml}
timeout=${PATCHHASH_CLUSTER_TIMEOUT:-120}

address_file=$(mktemp "${TMPDIR:-/tmp}/patchhash-scheduler.XXXXXX")
rm -f "$address_file"
"$python" -m workflows.slurm --config "$cluster_config" --address-file "$address_file" &
cluster_pid=$!
cleanup() {
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
    rm -f "$address_file"
}
trap cleanup EXIT

for _ in $(seq "$timeout"); do
    [[ -s $address_file ]] && break
    kill -0 "$cluster_pid" 2>/dev/null || { echo "run-nightly: the SLURM cluster failed to start" >&2; exit 1; }
    sleep 1
done
[[ -s $address_file ]] || { echo "run-nightly: no scheduler after ${timeout}s" >&2; exit 1; }

# patchhash's own index lock (--wait-for-lock in the job spec) keeps overlapping runs apart
PATCHHASH_SCHEDULER=$(<"$address_file") "$patchhash" index --config "$job"
