#!/bin/bash
# Submit the whole chain with dependencies and print the job ids:
#   preprocess (array) -> merge -> train + meta-train -> evaluate (array, one task per run) -> compare
# Each job starts only when the ones it needs ended COMPLETED (afterok); a preempted training job requeues
# itself and its dependants wait for it. Settings come from the environment (see README.md), e.g.
#   CXR_DATA=/data/nih CXR_WORK=/scratch/$USER/cxr PARTITION=gpu bash pipeline.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${CXR_DATA:?set CXR_DATA to the dataset directory}"
: "${CXR_WORK:?set CXR_WORK to a directory for the cache, runs, evaluations and logs}"
export CXR_CACHE_DIR=${CXR_CACHE_DIR:-$CXR_WORK/cache}
export CXR_RUN=${CXR_RUN:-$CXR_WORK/runs/supervised}
export CXR_META_RUN=${CXR_META_RUN:-$CXR_WORK/runs/maml}
export CXR_RUNS="$CXR_RUN $CXR_META_RUN"
export CXR_COMPARISON=${CXR_COMPARISON:-$CXR_WORK/comparison}
SHARDS=${SHARDS:-4}
LOG_DIR=${LOG_DIR:-$CXR_WORK/logs}
mkdir -p "$LOG_DIR" "$CXR_WORK/runs"

# Options every job gets: partition and account when set, SBATCH_ARGS (e.g. "--cpus-per-task=2 --time=1:00:00",
# overriding the files' #SBATCH lines), logs under LOG_DIR (never in the current directory).
common=(--parsable --chdir "$CXR_WORK" ${PARTITION:+--partition="$PARTITION"} ${ACCOUNT:+--account="$ACCOUNT"})
read -r -a extra <<<"${SBATCH_ARGS:-}"
common+=("${extra[@]}")
submit() { sbatch "${common[@]}" --output "$LOG_DIR/%x-%j.out" "$@"; }
submit_array() { sbatch "${common[@]}" --output "$LOG_DIR/%x-%A_%a.out" "$@"; }

pre=$(submit_array --array=0-$((SHARDS - 1)) "$here/preprocess.sbatch")
merge=$(submit --dependency=afterok:"$pre" "$here/merge.sbatch")
train=$(submit --dependency=afterok:"$merge" "$here/train.sbatch")
meta=$(submit --dependency=afterok:"$merge" "$here/meta-train.sbatch")
eval=$(submit_array --array=0-1 --dependency=afterok:"$train:$meta" "$here/evaluate.sbatch")
compare=$(submit --dependency=afterok:"$eval" "$here/compare.sbatch")

echo "preprocess=$pre merge=$merge train=$train meta-train=$meta evaluate=$eval compare=$compare"
