#!/usr/bin/env python3
"""How far `vggft predict` finds inputs from a run's training photos
(`feature_distance` in its JSON output; the warning above 4.0), per group of
inputs, as a Markdown table: the run's own training and validation photos
(from its split.csv), other face sets named on the command line, and pictures
with no face that this script makes (blank frames, noise, a gradient, a
chart-like drawing).

  .venv/bin/python scripts/unusual_inputs.py RUN [NAME=GLOB ...] [--vggft PATH]

e.g. scripts/unusual_inputs.py runs/latest 'jaffe-like=/tmp/jl/*.tiff'
Each group is answered alone (`--subject-from none`), as one photo of a
person is; for a subject-normalised run also the validation people's photos
each person's together (`--held-out`), and one of them with the pictures
without a face given as that person's photos too (`--subject`).
"""
import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 4.0  # predict::UNUSUAL


def no_faces(dir):
    """Pictures that hold no face, 256 px gray."""
    rng = np.random.RandomState(0)
    out = []

    def save(name, a):
        p = os.path.join(dir, name)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p)
        out.append(p)

    for level in (0, 128, 255):
        save(f"flat-{level}.png", np.full((256, 256), level))
    save("noise.png", rng.rand(256, 256) * 255)
    save("gradient.png", np.tile(np.linspace(0, 255, 256), (256, 1)))
    img = Image.new("L", (256, 256), 255)
    d = ImageDraw.Draw(img)
    for i in range(8):
        d.rectangle([20 + 28 * i, 230 - 25 * (i % 5 + 1), 40 + 28 * i, 230], fill=60)
    d.line([10, 230, 250, 230], fill=0, width=2)
    d.line([10, 10, 10, 230], fill=0, width=2)
    p = os.path.join(dir, "chart.png")
    img.save(p)
    out.append(p)
    return out


def answers(vggft, run, args):
    r = subprocess.run([vggft, "predict", "--model", run, "--format", "json", *args], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        sys.exit(f"vggft predict failed: {r.stderr}")
    return json.loads(r.stdout)


def distances(vggft, run, paths):
    if not paths:
        return []
    return [o["feature_distance"] for o in answers(vggft, run, ["--subject-from", "none", *paths]) if "feature_distance" in o]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a vggft run folder")
    ap.add_argument("sets", nargs="*", metavar="NAME=GLOB", help="other face sets, each a group of its own")
    ap.add_argument("--vggft", default=os.path.join(ROOT, "target", "release", "vggft"), help="the binary")
    a = ap.parse_args()
    vggft, run, groups, rows = a.vggft, a.run, [], []
    split = os.path.join(run, "split.csv")
    if os.path.exists(split):
        with open(split) as f:
            rows = list(csv.DictReader(f))
        for side in ("train", "val"):
            groups.append((f"the run's {side} photos", [r["path"] for r in rows if r["side"] == side]))
    for g in a.sets:
        name, pattern = g.split("=", 1)
        groups.append((name, sorted(glob.glob(pattern))))
    with tempfile.TemporaryDirectory() as tmp:
        odd = no_faces(tmp)
        groups.append(("no face (blank ×3, noise, gradient, chart)", odd))
        print(f"run `{run}`; feature distance per input; warned above {LIMIT}\n")
        print("| inputs | n | min | median | 95th pct | max | warned |")
        print("|---|---|---|---|---|---|---|")

        def row(name, d):
            d = np.array(d)
            if len(d):
                print(
                    f"| {name} | {len(d)} | {d.min():.2f} | {np.median(d):.2f} | {np.percentile(d, 95):.2f} | {d.max():.2f} | {(d > LIMIT).sum()} of {len(d)} |"
                )

        for name, paths in groups:
            row(name + ", each alone", distances(vggft, run, paths))
        # A subject-normalised run: each validation person's photos together (person statistics), and the
        # same with the pictures without a face given as one more person's photos.
        held = [o for o in answers(vggft, run, ["--held-out"]) if o.get("mode") == "person"]
        row("the run's val photos, each person's together", [o["feature_distance"] for o in held if "feature_distance" in o])
        if held:
            one = [r["path"] for r in rows if r["side"] == "val"]
            person = [r["subject"] for r in rows if r["path"] == one[0]][0]
            mine = [r["path"] for r in rows if r["subject"] == person]
            got = answers(vggft, run, ["--subject", "x", *mine, *odd])
            row(f"person {person}'s photos with the 6 without a face among them: the person's", [o["feature_distance"] for o in got if o["path"] in mine])
            row("… and those without a face", [o["feature_distance"] for o in got if o["path"] not in mine])


if __name__ == "__main__":
    main()
