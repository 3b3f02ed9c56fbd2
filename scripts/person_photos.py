"""How many photos of a new person do person statistics need? Scores a run's
held-out people (its split.csv) from random k-photo subsets of each person's
photos, in one `vggft predict --subject-from parent` call (each subset is a
folder, so a person of its own: a person's statistics come from that
person's photos alone), and the same photos by the single-image head.

    vggft finetune --data JL --val subjects:0.3 --out OUT --name m
    .venv/bin/python scripts/person_photos.py OUT/m [--draws 10] [--seed 0]

JAFFE names give the truth (NE: neutral, every other code: expressive).
Prints the pooled balanced accuracy per k (every draw's photos together).
"""
import argparse
import collections
import csv
import os
import random
import re
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truth(path):
    return "neutral" if os.path.basename(path).split(".")[1].startswith("NE") else "expressive"


def balanced(rows):
    per = collections.defaultdict(lambda: [0, 0])
    for t, p in rows:
        per[t][0] += t == p
        per[t][1] += 1
    return sum(a / n for a, n in per.values()) / len(per), {k: f"{a}/{n}" for k, (a, n) in sorted(per.items())}


def predict(vggft, run, how, inputs):
    out = subprocess.run([vggft, "predict", "--model", run, "--format", "csv", *how, *inputs], check=True, capture_output=True, text=True).stdout
    return list(csv.DictReader(out.splitlines()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--draws", type=int, default=10, help="random subsets per person and k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vggft", default=os.path.join(ROOT, "target", "release", "vggft"))
    a = ap.parse_args()
    with open(os.path.join(a.run, "split.csv"), newline="") as f:
        val = [r for r in csv.DictReader(f) if r["side"] == "val"]
    people = sorted({r["subject"] for r in val})
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for p in people:
            photos = [r["path"] for r in val if r["subject"] == p]
            for k in sorted({k for k in (2, 3, 5, 7, 10, 14, len(photos)) if k <= len(photos)}):
                for d in range(a.draws if k < len(photos) else 1):
                    folder = os.path.join(tmp, f"{p}-k{k}-d{d}")
                    os.makedirs(folder)
                    for src in rng.sample(photos, k):
                        os.symlink(os.path.abspath(src), os.path.join(folder, os.path.basename(src)))
                    folders.append(folder)
        by_k = collections.defaultdict(list)
        for r in predict(a.vggft, a.run, ["--subject-from", "parent"], folders):
            by_k[int(re.search(r"-k(\d+)-d\d+$", os.path.dirname(r["path"])).group(1))].append((truth(r["path"]), r["class"]))
        every = [r["path"] for r in val]
        single = [(truth(r["path"]), r["class"]) for r in predict(a.vggft, a.run, ["--subject-from", "none"], every)]
    print(f"{len(people)} held-out people ({', '.join(people)}), {len(val)} photos, {a.draws} random subsets per person and k")
    for k in sorted(by_k):
        b, counts = balanced(by_k[k])
        print(f"k = {k:2d} photos of the person: pooled balanced accuracy {b:.3f}  (right/scored: {counts})")
    b, counts = balanced(single)
    print(f"single-image head, each photo alone: {b:.3f}  ({counts})")


if __name__ == "__main__":
    main()
