"""Does removing the training people's identity directions help a photo seen
alone? A single-image probe (globally standardised features, no person
statistics) with and without nuisance-attribute projection: the top k
principal directions of the training people's mean feature vectors are
projected out of every feature vector before the logistic regression, so
that a new person's photo needs no other photo of that person.

    vggft cv --data JL --folds loso --seeds 0 --face none --feature-cache off \
        --dump-features F.safetensors --fold 0 --out /tmp/cv-dump
    .venv/bin/python scripts/identity_projection_study.py F.safetensors [K,…] [C,…]

Leave-one-subject-out on a JAFFE-named set; trained on the clean, mirrored
and augmented views, scored on the mean of a test photo's clean and mirrored
probabilities; neutral vs rest trained on the two task classes (as the
single-image head is by default) and 7-way on the codes, class weights
balancing the classes; balanced accuracy averaged over the folds, as `vggft
cv` reports it. Results: docs/results/accuracy/README.md, "The single-image head
against a plain probe" (not built: within a fold's spread).
"""
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_study import CODES, bacc, class_weights, fit_lr  # noqa: E402


def main():
    f = sys.argv[1]
    ks = [int(k) for k in (sys.argv[2] if len(sys.argv) > 2 else "0,2,4,8").split(",")]
    cs = [float(c) for c in (sys.argv[3] if len(sys.argv) > 3 else "0.01,0.1").split(",")]
    t = load_file(f)
    rows = json.loads(Path(f).with_suffix(".json").read_text())["rows"]
    code = torch.tensor([CODES.index(re.match(r"[^.]+\.([A-Z]{2})", Path(p).name).group(1)) for p, _ in rows])
    people = sorted({s for _, s in rows})
    g = torch.tensor([people.index(s) for _, s in rows])
    clean, aug = t["clean"], t["aug"]
    flipped = t.get("flipped", clean)
    n = clean.shape[0]
    views = aug.shape[0] // n
    r2t = [0 if r == CODES.index("NE") else 1 for r in range(7)]
    print(f"{n} images, {len(people)} people, {views} views, {clean.shape[1]} features", flush=True)
    res = {}
    for p in range(len(people)):
        tr, te = (g != p).nonzero().squeeze(1), (g == p).nonzero().squeeze(1)
        xtr = torch.cat([clean[tr], flipped[tr]] + [aug[v * n + tr] for v in range(views)]).double()
        ytr = code[tr].repeat(2 + views)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        z = lambda x: (x.double() - mu) / sd  # noqa: E731
        ztr = z(xtr)
        # The training people's mean (clean) photos, centred: their principal directions are identity.
        means = torch.stack([z(clean[tr][g[tr] == q]).mean(0) for q in sorted(set(g[tr].tolist()))])
        _, _, vh = torch.linalg.svd(means - means.mean(0), full_matrices=False)
        yt = torch.tensor([r2t[r] for r in code[te]])
        for k in ks:
            v = vh[:k].T
            proj = (lambda x: x - (x @ v) @ v.T) if k else (lambda x: x)  # noqa: E731
            for c in cs:
                for task in ("neutral vs rest", "7-way"):
                    if task == "7-way":
                        y, kk = ytr, 7
                        w = class_weights(y, list(range(7)), 7, 7)
                    else:
                        y, kk = torch.tensor([r2t[r] for r in ytr]), 2
                        w = class_weights(y, [0, 1], 2, 2)
                    prob = fit_lr(proj(ztr).float(), y, w, c, kk)
                    pr = (prob(proj(z(clean[te])).float()) + prob(proj(z(flipped[te])).float())) / 2
                    score = bacc(yt, pr.argmax(1), 2) if task != "7-way" else bacc(code[te], pr.argmax(1), 7)
                    res.setdefault((task, k, c), []).append(score)
        print(f"fold {p} done", flush=True)
    for (task, k, c), v in sorted(res.items()):
        print(f"{task}: k={k} C={c:g}: balanced accuracy {sum(v) / len(v):.3f}")


if __name__ == "__main__":
    main()
