"""What a decision threshold set for new people would be worth, read off one
`vggft cv` folder of a two-class task (neutral vs rest). For each fold it
takes the threshold on P(first class) that maximises balanced accuracy on
the *other* folds' test scores of the same seed — people other than the
test person, each scored by a model that never saw them, so no label of the
test person is used — and applies it to that fold's test photos. It prints
the balanced accuracy (mean over folds, as `cv.md` reports it) at 0.5 and
with those thresholds, the sample standard deviation of the per-seed means,
and the thresholds chosen.

An estimate of what an inner subject-grouped cross-validation over the
training people would give if training set the threshold (vggft does not
yet): the other folds' models are not the test fold's model. On the
JAFFE-format sets the neutral photos sit right at 0.5 (docs/results/accuracy,
"Five heads averaged"), which is what this measures on any other set.

    .venv/bin/python scripts/threshold_check.py CV_DIR
    .venv/bin/python scripts/threshold_check.py --self-test   (make test)
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_ensemble import balanced, read  # noqa: E402  (the same fold reader and per-fold figure)


def predict(p0, t):
    """Class 0 where P(class 0) ≥ t (at 0.5: `cv`'s argmax, ties to class 0)."""
    return np.where(p0 >= t, 0, 1)


def best_threshold(y, p0):
    """The threshold maximising balanced accuracy of (y, p0): candidates are
    0.5 and the midpoints between consecutive distinct scores; ties go to the
    one nearest 0.5."""
    s = np.unique(p0)
    cands = np.concatenate([[0.5], (s[1:] + s[:-1]) / 2])
    scores = np.array([balanced(y, predict(p0, t), 2) for t in cands])
    best = cands[np.isclose(scores, scores.max(), rtol=0, atol=1e-12)]
    return float(best[np.argmin(np.abs(best - 0.5))])


def check(folds):
    """{seed: ([bacc at 0.5 per fold], [bacc with the other folds' threshold], [thresholds])}."""
    out = {}
    for s, per in folds.items():
        at_half, tuned, ts = [], [], []
        for fi, j in sorted(per.items()):
            y, p0 = np.array(j["y"]), np.array(j["probs"])[:, 0]
            oy = np.concatenate([np.array(per[g]["y"]) for g in per if g != fi])
            op = np.concatenate([np.array(per[g]["probs"])[:, 0] for g in per if g != fi])
            t = best_threshold(oy, op)
            at_half.append(balanced(y, predict(p0, 0.5), 2))
            tuned.append(balanced(y, predict(p0, t), 2))
            ts.append(t)
        out[s] = (at_half, tuned, ts)
    return out


def report(d):
    """The printed lines for cv folder `d`."""
    folds = read(d)
    seeds = sorted(folds)
    if not seeds:
        sys.exit(f"{d}/folds: no fold results (a cv folder)")
    if any(np.array(j["probs"]).shape[1] != 2 for per in folds.values() for j in per.values()):
        sys.exit(f"{d}: not a two-class task (a threshold needs neutral vs rest or another binary task)")
    if any(len(per) < 2 for per in folds.values()):
        sys.exit(f"{d}/folds: every seed needs at least 2 folds")
    r = check(folds)

    def line(what, k):
        means = [np.mean(r[s][k]) for s in seeds]
        sd = f", per-seed sd {np.std(means, ddof=1):.3f}" if len(means) > 1 else ""
        return f"  {what}: balanced accuracy {np.mean(means):.3f}{sd}"

    ts = np.concatenate([r[s][2] for s in seeds])
    return [
        f"{d}: {len(seeds)} seed(s) × {len(folds[seeds[0]])} folds",
        line("threshold 0.5 (cv.md)", 0),
        line("threshold from the other folds' people", 1),
        f"  thresholds on P(first class): median {np.median(ts):.3f}, range {ts.min():.3f}–{ts.max():.3f}",
    ]


def self_test():
    """Two seeds, three folds; every figure worked out by hand."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "folds").mkdir()
        ys = ([0, 1], [0, 1], [0, 0, 1])
        # P(class 0): the class-0 photos below 0.5 but above every class-1 photo.
        p0 = {0: ([0.40, 0.20], [0.42, 0.22], [0.38, 0.45, 0.25]), 1: ([0.40, 0.20], [0.42, 0.22], [0.60, 0.45, 0.25])}
        for s, per_fold in p0.items():
            for fi, (y, ps) in enumerate(zip(ys, per_fold)):
                (Path(d) / "folds" / f"seed{s}-fold{fi}.json").write_text(json.dumps({"seed": s, "fold": fi, "y": y, "probs": [[p, 1 - p] for p in ps]}))
        r = check(read(d))
        # At 0.5 every class-0 photo below it is wrong: seed 0 each fold 0.5; seed 1 fold 2 (0.6 right, 0.45 wrong) 0.75.
        assert r[0][0] == [0.5, 0.5, 0.5] and r[1][0] == [0.5, 0.5, 0.75], r
        # Seed 0, fold 0: the others' scores 0.22 0.25 | 0.38 0.42 0.45 → midpoint 0.315 separates them; fold 2: 0.20 0.22 | 0.40 0.42 → 0.31.
        assert np.allclose(r[0][2], [0.315, 0.315, 0.31]) and np.allclose(r[1][2], [0.335, 0.325, 0.31]), r
        assert r[0][1] == [1.0, 1.0, 1.0] and r[1][1] == [1.0, 1.0, 1.0], r
        assert best_threshold(np.array([0, 1]), np.array([0.9, 0.1])) == 0.5, "ties go to 0.5"
        lines = report(d)
        assert lines[1] == "  threshold 0.5 (cv.md): balanced accuracy 0.542, per-seed sd 0.059", lines
        assert lines[2] == "  threshold from the other folds' people: balanced accuracy 1.000, per-seed sd 0.000", lines
        assert lines[3] == "  thresholds on P(first class): median 0.315, range 0.310–0.335", lines
    print("threshold_check self-test: ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print("\n".join(report(sys.argv[1])))


if __name__ == "__main__":
    main()
