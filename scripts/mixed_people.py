#!/usr/bin/env python3
"""What happens when several people are given to `vggft predict` as one
person (`--subject ID` over a folder of many people, a manifest whose
`subject` column is wrong): a subject-normalised run's own photos (its
split.csv) predicted with each person's photos together, with two people's
photos as one person, and with every photo as one person — balanced
accuracy on the training and the validation people, and the range of the
people's median `feature_distance` (each photo's distance from its person's
average in units of the training people's within-person spread; about 1 for
one person's photos). A Markdown table on stdout.

  .venv/bin/python scripts/mixed_people.py RUN [CV ...] [--vggft PATH]

Each CV (a `vggft cv` folder) adds the same per-person medians for its test
people, one person each: how far real people's photos spread.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def predict(vggft, run, manifest):
    out = subprocess.run([vggft, "predict", manifest, "--model", run, "--format", "csv"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"vggft predict failed: {out.stderr}")
    return {r["path"]: r for r in csv.DictReader(out.stdout.splitlines())}


def balanced(rows, truth, first):
    hits = {}
    for path, r in rows.items():
        t = truth[path] == first
        hits.setdefault(t, []).append((r["class"] == first) == t)
    return sum(sum(h) / len(h) for h in hits.values()) / len(hits)


def medians(distances, people):
    per = {}
    for path, d in distances.items():
        per.setdefault(people[path], []).append(d)
    return sorted(statistics.median(v) for v in per.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a subject-normalised vggft run folder")
    ap.add_argument("cvs", nargs="*", metavar="CV", help="vggft cv folders whose test people add their medians")
    ap.add_argument("--vggft", default=os.path.join(ROOT, "target", "release", "vggft"), help="the binary")
    a = ap.parse_args()
    vggft, run, cvs = a.vggft, a.run, a.cvs
    split = list(csv.DictReader(open(os.path.join(run, "split.csv"))))
    classes = json.load(open(os.path.join(run, "config.json")))["classes"]
    truth = {r["path"]: r["class"] for r in split}
    side = {r["path"]: r["side"] for r in split}
    people = sorted({r["subject"] for r in split})
    groupings = {
        "each person's photos together": lambda r: r["subject"],
        "two people as one": lambda r: f"M{people.index(r['subject']) // 2}",
        "every photo as one person": lambda r: "X",
    }
    print(f"Run `{run}` ({len(split)} photos, {len(people)} people; {classes[0]} vs the rest, balanced accuracy)\n")
    print("| grouping | training people | validation people | people's median distance (training / validation) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, key in groupings.items():
            manifest = os.path.join(tmp, "m.csv")
            with open(manifest, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "subject"])
                for r in split:
                    w.writerow([r["path"], key(r)])
            rows = predict(vggft, run, manifest)
            groups = {r["path"]: key(r) for r in split}
            cells = []
            spread = []
            for s in ("train", "val"):
                part = {p: r for p, r in rows.items() if side[p] == s}
                cells.append(f"{balanced(part, truth, classes[0]):.3f}" if part else "–")
                m = medians({p: float(r["feature_distance"]) for p, r in part.items()}, groups)
                spread.append(f"{m[0]:.2f}–{m[-1]:.2f}" if m else "–")
            print(f"| {name} | {cells[0]} | {cells[1]} | {' / '.join(spread)} |")
    for cv in cvs:
        meds = []
        for f in sorted(os.listdir(os.path.join(cv, "folds"))):
            j = json.load(open(os.path.join(cv, "folds", f)))
            if j.get("distances"):
                meds += medians(dict(enumerate(j["distances"])), dict(enumerate(j["subjects"])))
        meds.sort()
        if meds:
            print(f"\ncv `{cv}`: {len(meds)} test people (one per fold and seed), median distance {meds[0]:.2f}–{meds[-1]:.2f}, the largest five {', '.join(f'{m:.2f}' for m in meds[-5:])}")


if __name__ == "__main__":
    main()
