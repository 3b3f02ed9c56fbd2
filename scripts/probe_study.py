"""Linear probes on the pooled features vggft cached, outside vggft: is the
default probe (`head:15`, SGD through a BN head) as good as a logistic
regression trained to convergence on the same features and folds?

    vggft cv --data JL --folds loso --dump-features F.safetensors ...
    .venv/bin/python scripts/probe_study.py F.safetensors

Leave-one-subject-out on a JAFFE-named set (labels from the file names),
per-subject normalisation as src/subject.rs does it (training people: their
clean photos' statistics, applied to the augmented views; a test person: the
statistics of that person's photos, mirrored photos their own), a multinomial
logistic regression on the 7 raw labels with class weights that balance the
task's classes (train::class_weights), full-batch L-BFGS; neutral vs rest read
off as P(NE). Prints the mean over folds of each fold's balanced accuracy, as
`vggft cv` does.
"""
import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

CODES = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]
VAR_PRIOR = 2.0


def norm(f, g):
    """Standardises each group with its own statistics."""
    return apply_stats(f, g, person_stats(f, g))


def person_stats(f, g):
    """Each group's mean and std as src/subject.rs fits them."""
    keys = sorted(set(g.tolist()))
    n = {k: (g == k).sum().item() for k in keys}
    var = {k: f[g == k].double().var(0, unbiased=False) for k in keys}
    pooled = sum(n[k] * var[k] for k in keys) / sum(n.values())
    return {k: (f[g == k].double().mean(0), ((var[k] * n[k] + pooled * VAR_PRIOR) / (n[k] + VAR_PRIOR) + 1e-5).sqrt()) for k in keys}


def apply_stats(f, g, stats):
    out = torch.empty_like(f)
    for k, (mu, sd) in stats.items():
        out[g == k] = ((f[g == k].double() - mu) / sd).float()
    return out


def train_features(clean, flipped, aug, tr, gs, views, n, train_on):
    """Training rows (all views stacked, in `tr` order per view), normalised
    with each training person's statistics from their clean photos."""
    stats = person_stats(clean[tr], gs)
    srcs = {"aug": [aug[v * n + tr] for v in range(views)], "clean": [clean[tr]], "clean+flipped": [clean[tr], flipped[tr]]}[train_on]
    return torch.cat([apply_stats(s, gs, stats) for s in srcs])


def fit_lr(x, y, w, c, k):
    """Weighted multinomial logistic regression, L2 strength 1/(c·n), L-BFGS."""
    x = x.double()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    wt = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([wt, b], lr=1, max_iter=500, history_size=20, line_search_fn="strong_wolfe")
    sw = w[y]

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(xs @ wt + b, y, reduction="none") * sw).sum() / sw.sum()
        loss = loss + 0.5 * (wt**2).sum() / (c * len(y))
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: torch.softmax((((z.double() - mu) / sd) @ wt + b).detach(), 1)


def class_weights(y_raw, raw_to_task, k, n_task):
    counts = torch.bincount(y_raw, minlength=k).double()
    w = torch.zeros(k, dtype=torch.float64)
    for t in range(n_task):
        raws = [r for r in range(k) if raw_to_task[r] == t and counts[r] > 0]
        for r in raws:
            w[r] = len(y_raw) / n_task / len(raws) / counts[r]
    return w


def bacc(y, pred, k):
    rec = [((pred == c) & (y == c)).sum().item() / (y == c).sum().item() for c in range(k) if (y == c).sum() > 0]
    return sum(rec) / len(rec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("features")
    ap.add_argument("--c", default="0.001,0.01,0.1,1,10")
    ap.add_argument("--train-on", default="aug", choices=["aug", "clean", "clean+flipped"])
    ap.add_argument("--blocks", default="all", help="all, or which 512-wide slices to keep, e.g. 0,1 (conv4 avg, max)")
    a = ap.parse_args()
    t = load_file(a.features)
    rows = json.loads(Path(a.features).with_suffix(".json").read_text())["rows"]
    names = [Path(p).name for p, _ in rows]
    code = torch.tensor([CODES.index(re.match(r"[^.]+\.([A-Z]{2})", n).group(1)) for n in names])
    subj = [s for _, s in rows]
    people = sorted(set(subj))
    g = torch.tensor([people.index(s) for s in subj])
    # A dump without mirror images (flip TTA off): score the clean view alone.
    clean, aug = t["clean"], t["aug"]
    flipped = t.get("flipped", clean)
    n = clean.shape[0]
    views = aug.shape[0] // n
    if a.blocks != "all":
        keep = torch.cat([torch.arange(int(s) * 512, int(s) * 512 + 512) for s in a.blocks.split(",")])
        clean, flipped, aug = clean[:, keep], flipped[:, keep], aug[:, keep]
    ne = CODES.index("NE")
    raw_to_task = [0 if r == ne else 1 for r in range(7)]
    print(f"{n} images, {len(people)} people, {views} views, {clean.shape[1]} features, training on {a.train_on}")
    for c in [float(s) for s in a.c.split(",")]:
        b2, b7 = [], []
        for p in range(len(people)):
            tr = (g != p).nonzero().squeeze(1)
            te = (g == p).nonzero().squeeze(1)
            xtr, ytr = train_features(clean, flipped, aug, tr, g[tr], views, n, a.train_on), code[tr]
            ytr = ytr.repeat(len(xtr) // len(tr))
            w = class_weights(ytr, raw_to_task, 7, 2)
            w7 = class_weights(ytr, list(range(7)), 7, 7)
            gt = g[te]
            zt, zf = norm(clean[te], gt), norm(flipped[te], gt)
            for task, weights, out in [("binary", w, b2), ("7-way", w7, b7)]:
                prob = fit_lr(xtr, ytr, weights, c, 7)
                pr = (prob(zt) + prob(zf)) / 2
                if task == "binary":
                    yt = torch.tensor([raw_to_task[r] for r in code[te]])
                    pred = (pr[:, ne] < 0.5).long()
                    out.append(bacc(yt, pred, 2))
                else:
                    out.append(bacc(code[te], pr.argmax(1), 7))
        mean = lambda v: sum(v) / len(v)
        std = lambda v: (sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1)) ** 0.5
        print(f"C={c:g}: neutral vs rest {mean(b2):.3f} ± {std(b2):.3f}   7-way {mean(b7):.3f} ± {std(b7):.3f}", flush=True)


if __name__ == "__main__":
    main()
