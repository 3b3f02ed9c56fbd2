"""What averaging several seeds' models would be worth, read off one
`vggft cv` folder: leave-one-subject-out folds are the same for every seed,
so averaging the seeds' test probabilities image by image scores an ensemble
of those seeds' models (geometric mean of the probabilities, i.e. averaged
log-probabilities — for linear heads the same answer as one head with the
averaged logits). For K = 3, 5, 7 it draws random K-subsets of the
folder's seeds (K = 1: every seed once) and prints each ensemble size's mean
balanced accuracy (the mean over folds, as `cv.md` reports it) and the
spread over draws (standard deviation dividing by the number of draws;
`cv.md`'s "Per seed" divides by n − 1) — how far apart two users with
different seeds would land — and, per task class, how many test photos
change answer between seeds.

    .venv/bin/python scripts/seed_ensemble.py CV_DIR [DRAWS]
    .venv/bin/python scripts/seed_ensemble.py --self-test   (make test)

Run it on a cv with many seeds (`vggft cv --data D --folds loso --seeds
0,1,…,14`; with `--dump-features F` once and `--load-features F` after, the
seeds cost seconds each). The draws share seeds, so their spread is low by
about sqrt((N - K)/(N - 1)) for K of N seeds (0.85 for 5 of 15); with 15
seeds K <= 7 is informative. `vggft --members K` trains such an ensemble
in one run (K heads, each on its own batch order and views, averaged into
one); its cv's "Per seed" measures the spread directly.
"""

import glob
import json
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def balanced(y, pred, k):
    """Mean recall over the classes present (vggft's per-fold figure)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(k) if (y == c).any()]))


def read(d):
    """{seed: {fold: fold result}} of a cv folder."""
    folds = defaultdict(dict)
    for f in glob.glob(f"{d}/folds/*.json"):
        j = json.load(open(f))
        folds[int(j["seed"])][int(j["fold"])] = j
    return folds


def score(folds, subset):
    """Balanced accuracy (mean over folds) of the seeds in `subset` averaged."""
    per = []
    for fi in sorted(folds[subset[0]]):
        y = np.array(folds[subset[0]][fi]["y"])
        logp = np.mean([np.log(np.clip(np.array(folds[s][fi]["probs"]), 1e-300, 1)) for s in subset], axis=0)
        per.append(balanced(y, logp.argmax(1), logp.shape[1]))
    return float(np.mean(per))


def changed(folds):
    """{class: [test photos, photos whose answer changes between seeds]}."""
    seeds = sorted(folds)
    flips = defaultdict(lambda: [0, 0])
    for fi in sorted(folds[seeds[0]]):
        y = np.array(folds[seeds[0]][fi]["y"])
        preds = np.array([np.array(folds[s][fi]["probs"]).argmax(1) for s in seeds])
        for c, col in zip(y, preds.T):
            flips[int(c)][0] += 1
            flips[int(c)][1] += int(len(set(col)) > 1)
    return flips


def self_test():
    """Two folds, three seeds, probabilities chosen so every figure is known by hand."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "folds").mkdir()
        # Fold 0: classes [0, 1]; fold 1: classes [0, 0, 1]. P(class 0) per seed:
        p0 = {0: ([0.9, 0.6], [0.6, 0.2, 0.1]), 1: ([0.9, 0.3], [0.4, 0.8, 0.1]), 2: ([0.2, 0.3], [0.7, 0.7, 0.45])}
        for s, per_fold in p0.items():
            for fi, (ys, ps) in enumerate(zip(([0, 1], [0, 0, 1]), per_fold)):
                probs = [[p, 1 - p] for p in ps]
                (Path(d) / "folds" / f"seed{s}-fold{fi}.json").write_text(json.dumps({"seed": s, "fold": fi, "y": ys, "probs": probs}))
        folds = read(d)
        # Seed 0 alone: fold 0 (0→0 right, 1→0 wrong) = 0.5; fold 1 (0,0 right/wrong, 1 right) = (0.5 + 1) / 2.
        assert abs(score(folds, [0]) - (0.5 + 0.75) / 2) < 1e-12, score(folds, [0])
        # All three: geometric means of P(0) vs P(1), e.g. fold 0 photo 1: (0.6·0.3·0.3)^⅓ < (0.4·0.7·0.7)^⅓ → 1;
        # fold 1 photo 1: (0.2·0.8·0.7)^⅓ = 0.48 > (0.8·0.2·0.3)^⅓ = 0.36 → 0: every photo right.
        assert abs(score(folds, [0, 1, 2]) - 1.0) < 1e-12, score(folds, [0, 1, 2])
        # Seeds 1 and 2 (each alone wrong somewhere): fold 0 photo 0 (0.9·0.2)^½ = 0.42 > (0.1·0.8)^½ = 0.28 → 0;
        # fold 1 photo 2 (0.1·0.45)^½ = 0.21 < (0.9·0.55)^½ = 0.70 → 1; every photo right.
        assert abs(score(folds, [1, 2]) - 1.0) < 1e-12, score(folds, [1, 2])
        assert dict(changed(folds)) == {0: [3, 3], 1: [2, 1]}, dict(changed(folds))
        # The printed report: each seed alone (0.625, 0.875 and 0.75: mean 0.750, std ÷ n 0.102), all 3 together, the changes.
        lines = report(d, 50)
        assert lines[1] == "  1 seed(s) averaged: balanced accuracy 0.750, std over draws 0.102", lines
        assert lines[2] == "  3 seed(s) averaged: balanced accuracy 1.000, std over draws 0.000", lines
        assert lines[3:] == ["  class 0: 3 of 3 test photos change answer between seeds", "  class 1: 1 of 2 test photos change answer between seeds"], lines
    print("seed_ensemble self-test: ok")


def report(d, draws):
    """The printed lines for cv folder `d`."""
    folds = read(d)
    seeds = sorted(folds)
    if not seeds or len({len(v) for v in folds.values()}) != 1:
        sys.exit(f"{d}/folds: expected every seed's folds (a finished cv folder)")
    rng = random.Random(0)
    lines = [f"{d}: {len(seeds)} seeds × {len(folds[seeds[0]])} folds"]
    for k in (1, 3, 5, 7):
        if k > len(seeds):
            break
        if k == 1:
            subsets = [[s] for s in seeds]  # every seed once: the spread of the per-seed means
        elif k == len(seeds):
            subsets = [seeds]
        else:
            subsets = [rng.sample(seeds, k) for _ in range(draws)]
        r = [score(folds, sub) for sub in subsets]
        lines.append(f"  {k} seed(s) averaged: balanced accuracy {np.mean(r):.3f}, std over draws {np.std(r):.3f}")
    # Photos whose answer depends on the seed: the source of the spread.
    classes = json.load(open(f"{d}/cv.json"))["classes"] if glob.glob(f"{d}/cv.json") else None
    for c, (n, moved) in sorted(changed(folds).items()):
        lines.append(f"  class {classes[c] if classes else c}: {moved} of {n} test photos change answer between seeds")
    return lines


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print("\n".join(report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 300)))


if __name__ == "__main__":
    main()
