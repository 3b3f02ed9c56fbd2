#!/usr/bin/env bash
# Cross-validation on a Slurm cluster: one array task per fold, then a
# dependent job that merges them (vggft cv --collect).
#
#   scripts/cv-slurm.sh OUT N_FOLDS [vggft cv options…]
#
# OUT      the shared cv folder (on a file system every node sees)
# N_FOLDS  folds per seed: K for --folds K, the number of people for --folds loso
# Each array task runs `vggft cv OPTIONS --fold $SLURM_ARRAY_TASK_ID --out OUT`
# (every seed of that fold); the collect job refuses to merge an incomplete
# set and names the missing folds. Extra sbatch options: SBATCH_OPTS="…".
# VGGFT (default: vggft on PATH, else target/release/vggft) is the binary.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
out=$1 folds=$2
shift 2
[[ $folds =~ ^[1-9][0-9]*$ ]] || { echo "cv-slurm.sh: N_FOLDS must be a positive number, got '$folds'" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
vggft=${VGGFT:-$(command -v vggft || echo "$here/target/release/vggft")}
quoted=$(printf ' %q' "$@")
# shellcheck disable=SC2086
array=$(sbatch --parsable ${SBATCH_OPTS:-} --job-name=vggft-cv --array="0-$((folds - 1))" \
  --wrap="$(printf '%q' "$vggft") cv$quoted --fold \$SLURM_ARRAY_TASK_ID --out $(printf '%q' "$out") --quiet")
array=${array%%;*}
# shellcheck disable=SC2086
collect=$(sbatch --parsable ${SBATCH_OPTS:-} --job-name=vggft-cv-collect --dependency="afterok:$array" \
  --wrap="$(printf '%q' "$vggft") cv --collect $(printf '%q' "$out")")
echo "submitted folds as array job $array (0-$((folds - 1))), collect as job ${collect%%;*}: results in $out/cv.md"
