#!/usr/bin/env bash
# Runs tokpre on every worker of a Cloud TPU VM pod slice (e.g. v4-32, v5p-64): the same command on all hosts.
# jax.distributed.initialize() detects the pod itself (tokpre.sharding.maybe_initialize_distributed sees
# TPU_WORKER_HOSTNAMES with more than one host), so no coordinator address is needed.
#
# Needs: the gcloud CLI, authenticated, with access to the TPU VM; the repository cloned at the same path on every
# worker (REPO_DIR, default ~/tokpre) with tokpre installed (`pip install -e . "jax[tpu]"`); the data at the same
# path on every worker or in a bucket (config key data.well_base_path), and a workdir every worker can write to
# (a gs:// path or a shared filesystem: Orbax writes from every process).
# Usage:
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh \
#       --config=configs/ae_then_dyn.py:paper --workdir=gs://my-bucket/runs/paper
# Environment: TPU_NAME (required), ZONE (required), PROJECT (optional: gcloud's default project otherwise),
# REPO_DIR (~/tokpre), PYTHON (python3 on the workers).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REPO_DIR="${REPO_DIR:-~/tokpre}"
PYTHON="${PYTHON:-python3}"
project_flag=()
if [[ -n "${PROJECT:-}" ]]; then project_flag=(--project "$PROJECT"); fi

# Quote every argument for the remote shell.
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${project_flag[@]}" --worker=all \
  --command "cd ${REPO_DIR} && ${PYTHON} -m tokpre.main${args}"
