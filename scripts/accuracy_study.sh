#!/usr/bin/env bash
# The accuracy comparisons of docs/results/accuracy/: each recipe in a
# subject-grouped K-fold cv × seeds, with the head-only probe on the same
# folds (--baseline probe), on the London faces and on their identity-
# dominated variant (scripts/distort_london.py). `global` is the recipe
# without person statistics (the pairs' default until 2026-12-04; its
# folders in docs/results/accuracy are named `*-default`), `subject-norm`
# the one `--subject-norm auto` picks for pairs now.
#
#   scripts/accuracy_study.sh OUT          # VGGFT=path/to/vggft, SIZE=112, FOLDS=5, SEEDS=0,1,2
set -euo pipefail
out=${1:?usage: accuracy_study.sh OUT}
vggft=${VGGFT:-target/release/vggft}
size=${SIZE:-112}
folds=${FOLDS:-5}
seeds=${SEEDS:-0,1,2}
london=${LONDON:-../shared/data/london-faces}
mkdir -p "$out"
[ -f "$out/london-distorted/manifest.csv" ] || .venv/bin/python scripts/distort_london.py "$london" "$out/london-distorted"
for data in london-distorted london; do
  path=$london; [ "$data" = london ] || path=$out/london-distorted
  while read -r name args; do
    [ -f "$out/$data-$name/cv.json" ] && continue
    echo "== $data $name: $args"
    # shellcheck disable=SC2086
    "$vggft" cv --data "$path" --image-size "$size" --folds "$folds" --seeds "$seeds" --baseline probe \
      --device cpu --out "$out/$data-$name" --quiet $args > "$out/$data-$name.log" 2>&1
  done <<'RECIPES'
global --subject-norm off
subject-norm --subject-norm on
RECIPES
done
