#!/usr/bin/env bash
# One node of an elastic multi-node run: torch elastic (torchrun) with its c10d rendezvous. When a node is lost,
# the others' processes fail in their next collective, torch elastic re-forms the group on the nodes that remain
# (at least MIN_NODES) and train.py resumes from the newest checkpoint with the accumulation re-derived; a node
# that joins later is taken in at the next restart. Each restart, lost node or joined node, uses one of
# MAX_RESTARTS.
#
# scripts/slurm_multinode.sbatch runs it once on every node (srun sets SLURM_NODEID, SLURM_NNODES, SLURM_JOB_ID).
# Without Slurm, run it on every node with those three set by hand and RDZV_HOST naming node 0:
#   SLURM_NODEID=0 SLURM_NNODES=2 SLURM_JOB_ID=gpt2 RDZV_HOST=10.0.0.1 scripts/elastic_node.sh train.py --preset gpt2-124m --resume auto
# Node 0 hosts the rendezvous: the run survives losing any node but that one.
set -euo pipefail
: "${RDZV_HOST:?set RDZV_HOST to node 0\'s address}" "${SLURM_NODEID:?}" "${SLURM_NNODES:?}" "${SLURM_JOB_ID:?}"
# Each round of the rendezvous gets a store of its own for the processes: with the agents' store shared (torch's
# default), a node that joins a later round waits forever for a key the first node wrote only in round 0.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
# Explicit rather than guessed from the host name (torch's guess misses aliases and secondary addresses).
is_host=$(( SLURM_NODEID == 0 ))
# SHUTDOWN_SECONDS: how long a process told to stop (SIGTERM) may take to finish its step and save before SIGKILL.
exec "${PYTHON:-.venv/bin/python}" -m torch.distributed.run \
    --nnodes "${MIN_NODES:-1}:${SLURM_NNODES}" \
    --nproc-per-node "${GPUS_PER_NODE:-gpu}" \
    --max-restarts "${MAX_RESTARTS:-3}" \
    --shutdown-timeout "${SHUTDOWN_SECONDS:-90}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${RDZV_HOST}:${RDZV_PORT:-29400}" \
    --rdzv-id "${SLURM_JOB_ID}" \
    --rdzv-conf "is_host=${is_host},last_call_timeout=${LAST_CALL_SECONDS:-30}" \
    "$@"
