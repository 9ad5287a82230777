#!/usr/bin/env bash
# Distributed training on one machine:  tools/dist_train.sh NUM_PROCS CONFIG [pointwin train options]
# e.g. tools/dist_train.sh 8 configs/waymo/dsvt_pillar.yaml --work-dir work_dirs/dsvt
# Several machines: run torchrun yourself with --nnodes/--node_rank/--rdzv_endpoint (see README).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NUM_PROCS CONFIG [pointwin train options]" >&2
  exit 2
fi
NPROC=$1
shift
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m pointwin train "$@"
