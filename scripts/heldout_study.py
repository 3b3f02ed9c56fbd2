"""The comparisons behind the person-statistics defaults, on one set, in one
table: the default recipe and each alternative that was chosen against on
the synthetic sets (docs/results/accuracy/), leave-one-subject-out × seeds on
the same folds, for neutral vs rest and 7-way. Made for a set this project
cannot see (the held-out JAFFE-format set): where a choice was level or
close here, this says which way it goes there.

    .venv/bin/python scripts/heldout_study.py DATA OUT [--seeds 0,1,2] [--only NAME,…] [--finetune]
    .venv/bin/python scripts/heldout_study.py --self-test [path/to/vggft]   (make test)

Every row with the default's features trains from one feature dump (the
default's first cv writes it, `--dump-features`), so each costs seconds per
fold; the rows marked "own cache" change the features and compute them
again (one cache pass per row, shared by its tasks: ~2–6 min for 210
images at 224 px on 2 cores);
`--finetune` adds the conv5 fine-tune with person statistics (one seed; ~20
min per seed at 224 px on 2 cores). A row whose cv.json exists is not run
again, so an interrupted study resumes. Writes OUT/ROW-TASK/ (each cv's
folder and log) and OUT/summary.md; prints the summary.

Each row: balanced accuracy as mean ± std over folds × seeds, the sd of the
per-seed means, the single-image head on the same folds (no other photo of
the person), each test person shown with one class only, ROC AUC, and the
cv's wall time.
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Stands for the set's mean face box (`fixed_box`) in a row's flags.
FIXED = "crop:FIXED"

# name, flags, own features (not from the default's dump), tasks, what it answers
ROWS = [
    ("default", [], False, ("binary", "multiclass"), "the default recipe (probe `head:50` on person statistics, conv4+conv5 3x3 grid, 5 heads, raw labels, inner threshold)"),
    ("single-labels-raw", ["--single-labels", "raw"], False, ("binary",), "the single-image head on the 7 raw labels instead of the task's 2 classes"),
    ("threshold-off", ["--threshold", "off"], False, ("binary",), "the larger probability instead of the inner-cv threshold"),
    ("members-1", ["--members", "1"], False, ("binary", "multiclass"), "one head instead of 5 averaged"),
    ("clean-views-false", ["--clean-views", "false"], False, ("binary", "multiclass"), "training on the augmented views instead of the clean and mirrored photos"),
    ("weight-decay-1e-4", ["--weight-decay", "1e-4"], False, ("binary", "multiclass"), "weight decay 1e-4 instead of 0.01 on the long probe"),
    ("pool-grid-1x1", ["--pool-grid", "1x1"], True, ("binary", "multiclass"), "global pooling instead of the 3x3 grid (own cache)"),
    ("pool-grid-2x2", ["--pool-grid", "2x2"], True, ("binary", "multiclass"), "a 2x2 grid (own cache)"),
    ("face-none", ["--face", "none"], True, ("binary", "multiclass"), "the whole frame instead of each person's face box (own cache)"),
    ("face-auto", ["--face", "auto"], True, ("binary",), "each photo's own detected face box instead of the person's median box (own cache)"),
    (
        "face-fixed",
        ["--face", FIXED],
        True,
        ("binary", "multiclass"),
        "one fixed box for every photo, both heads: the mean of the detector's boxes over the set (`vggft faces`, OUT/faces/faces.csv), as DESIGN's probes were measured; on a JAFFE-framed synthetic set without overlay it ranked a lone photo better than the whole frame (ROC AUC 0.85 vs 0.73) (own cache)",
    ),
    ("cache-views-8", ["--cache-views", "8"], True, ("binary", "multiclass"), "8 augmented views per photo instead of 4 (own cache, ~1.7× its time; helped a person shown with one class only)"),
    ("bf16", ["--precision", "bf16"], True, ("binary",), "the trunk in bfloat16 (own cache; ~4× faster with AMX; skipped on a CPU without bf16 arithmetic, where it is ~10× slower)"),
    (
        "plain-probe",
        "--subject-norm off --face person --stages head:50 --lr 0.01 --pool-grid 1x1 --features conv4,conv5 --members 1 --threshold off --tta flip --clean-views false".split(),
        True,
        ("binary", "multiclass"),
        "the issue's plain probe: global standardisation, global pooling, one head (own cache)",
    ),
]
FINETUNE = ("finetune-conv5", ["--freeze-until", "conv5"], True, ("binary",), "the conv5 fine-tune `head:3 → conv5:12` with person statistics (own trunk passes)")


def fixed_box(vggft, data, out):
    """`crop:x,y,w,h`: the mean of the boxes `vggft faces` finds in the set's
    photos (all of its boxes, the centred fallbacks too, where it finds none)."""
    folder = os.path.join(out, "faces")
    csv_path = os.path.join(folder, "faces.csv")
    if not os.path.exists(csv_path):
        r = subprocess.run([vggft, "faces", data, "--out", folder], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"vggft faces failed (exit {r.returncode}): {r.stderr.strip()}")
    with open(csv_path, newline="") as f:
        boxes = list(csv.DictReader(f))
    found = [b for b in boxes if b["score"] != "fallback"] or boxes
    mean = [round(sum(float(b[k]) for b in found) / len(found)) for k in ("x", "y", "w", "h")]
    return "crop:" + ",".join(str(v) for v in mean)


def stat(stats, name):
    for s in stats or []:
        if s["metric"] == name:
            return s["mean"], s["std"]
    return None


def fmt(ms):
    return "—" if ms is None else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def summarise(path):
    with open(path) as f:
        s = json.load(f)
    # cv's own sd of the per-seed balanced accuracies (absent with one seed).
    spread = s.get("seed_spread")
    alt = lambda k: fmt(stat((s.get(k) or {}).get("stats"), "balanced_accuracy"))
    return {
        "bacc": fmt(stat(s["stats"], "balanced_accuracy")),
        "seed_sd": "—" if spread is None else f"{spread['std']:.3f}",
        "auc": fmt(stat(s["stats"], "roc_auc")),
        # A cv from before the single-image head read the whole frame scored it on the person's
        # box, which a lone photo in predict does not get: an upper bound (marked †).
        "single": alt("single") + (" †" if s.get("person_box") and s.get("single") else ""),
        "one_class": alt("one_class"),
    }


def self_test(binary):
    """Every row's flags are accepted by this vggft (a usage error exits 2
    before the data is read; a missing data folder exits 1; with a random
    initialisation, as no pretrained weights may be here), and a tiny
    study (random-init network at 1/16 width, 3 people × 7 codes × 2
    samples) runs end to end: the default's dump written and read back, an
    own-cache row, the summary table filled."""
    binary = os.path.abspath(binary)
    for name, flags, _, _, _ in ROWS + [FINETUNE]:
        flags = ["crop:0,0,32,32" if f == FIXED else f for f in flags]
        # --random-init: a machine without pretrained weights (CI) is told so before the data is looked for.
        r = subprocess.run([binary, "cv", "--data", "/nonexistent-vggft-data", "--folds", "loso", "--random-init", *flags], capture_output=True, text=True)
        if r.returncode != 1 or "/nonexistent-vggft-data" not in r.stderr:
            print(f"row {name}: `{' '.join(flags)}` is not accepted (exit {r.returncode}): {r.stderr.strip()}")
            return False
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="vggft-heldout-") as d:
        data = os.path.join(d, "data")
        os.makedirs(data)
        for p, person in enumerate(("AA", "BB", "CC")):
            base = rng.integers(40, 200)
            for c, code in enumerate(("AN", "DI", "FE", "HA", "NE", "SA", "SU")):
                for k in (1, 2):
                    a = (base + rng.integers(-20, 20, (48, 48))).clip(0, 255).astype(np.uint8)
                    a[30 + c : 34 + c, 10:38] = 250  # each expression its own mark
                    Image.fromarray(a).save(os.path.join(data, f"{person}.{code}{k}.{p * 100 + c * 2 + k}.tiff"))
        out = os.path.join(d, "study")
        extra = "--random-init --width-div 16 --image-size 32 --threads 1 --device cpu --cache-views 1"
        cmd = [sys.executable, os.path.abspath(__file__), data, out, "--seeds", "0", "--only", "members-1,pool-grid-1x1,face-fixed", "--vggft", binary, "--extra", extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"tiny study failed (exit {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
            return False
        with open(os.path.join(out, "summary.md")) as f:
            table = f.read()
        rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| row")]
        want = {(n, t) for n in ("default", "members-1", "pool-grid-1x1", "face-fixed") for t in ("binary", "multiclass")}
        got = {tuple(c.strip() for c in l.split("|")[1:3]) for l in rows}
        if got != want or any(" ± " not in l.split("|")[3] for l in rows):
            print(f"tiny study: unexpected table:\n{table}")
            return False
        # The fixed box: the mean of `vggft faces`' boxes (here the centred fallbacks of noise), given to the row's cv.
        box = re.search(r"`face-fixed` \(`--face crop:(\d+),(\d+),(\d+),(\d+)`\)", table)
        if not box or not all(0 < int(v) <= 48 for v in box.groups()[2:]):
            print(f"tiny study: the face-fixed row has no box from vggft faces:\n{table}")
            return False
        with open(os.path.join(out, "face-fixed-binary", "cv-config.json")) as f:
            face = json.load(f)["run"]["data"]["preprocess"]["face"]
        if face != {"kind": "fixed", **dict(zip("xywh", map(int, box.groups())))}:
            print(f"tiny study: the face-fixed row's cv cropped {face}, not the box {box.groups()}")
            return False
        for n in ("default-multiclass", "members-1-binary", "members-1-multiclass", "pool-grid-1x1-multiclass", "face-fixed-multiclass"):
            with open(os.path.join(out, f"{n}.log")) as f:
                if "(not recomputed)" not in f.read():
                    print(f"tiny study: {n} did not read its row's feature dump")
                    return False
    print("heldout_study self-test: ok")
    return True


def main():
    if sys.argv[1:2] == ["--self-test"]:
        sys.exit(0 if self_test(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target", "release", "vggft")) else 1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", help="comma-separated row names (default: all)")
    ap.add_argument("--finetune", action="store_true", help="add the conv5 fine-tune (one seed: the first of --seeds)")
    ap.add_argument("--vggft", default=os.path.join(ROOT, "target", "release", "vggft"))
    ap.add_argument("--extra", default="", help="flags added to every cv (e.g. '--image-size 112' for a quick look)")
    a = ap.parse_args()
    rows = ROWS + ([FINETUNE] if a.finetune else [])
    if a.only:
        want = set(a.only.split(","))
        unknown = want - {r[0] for r in rows}
        if unknown:
            sys.exit(f"unknown row(s): {', '.join(sorted(unknown))} (known: {', '.join(r[0] for r in rows)})")
        rows = [r for r in rows if r[0] in want or r[0] == "default"]
    os.makedirs(a.out, exist_ok=True)
    if any(FIXED in r[1] for r in rows):
        box = fixed_box(a.vggft, a.data, a.out)
        rows = [(n, [box if f == FIXED else f for f in flags], own, tasks, what) for n, flags, own, tasks, what in rows]
    lines = [
        f"# Held-out study: `{a.data}`",
        "",
        f"`vggft cv --data {a.data} --folds loso --seeds {a.seeds} [--task multiclass] FLAGS{' ' + a.extra if a.extra else ''}`;"
        " leave-one-subject-out, balanced accuracy mean ± std over folds × seeds, the sd of the per-seed means,"
        " the single-image head (on each photo's whole frame, as predict answers a lone photo; on the row's crop where its `--face` gives one: `face-auto`, `face-fixed`) and each test person"
        " shown with one class only on the same folds († a cv from before 2026-12-05, whose single-image head read"
        " the person's face box, which a lone photo in predict does not get: an upper bound).",
        "",
        "| row | task | balanced accuracy | sd of seed means | ROC AUC | single-image head | one class at a time | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # `vggft speed` leaves bf16 out (null) where the CPU would emulate it.
    extra = a.extra.split()
    device = extra[extra.index("--device") + 1] if "--device" in extra[:-1] else "auto"
    speed = subprocess.run([a.vggft, "speed", "--json", "--image-size", "32", "--batch-size", "1", "--reps", "1", "--device", device], capture_output=True, text=True)
    emulated_bf16 = speed.returncode == 0 and json.loads(speed.stdout)["matmul_bf16_gflops"] is None
    for name, flags, own, tasks, _ in rows:
        if name == "bf16" and emulated_bf16:
            lines.append(f"| {name} | — | skipped: this CPU has no bf16 arithmetic (libtorch emulates it, ~10× slower) | | | | | |")
            continue
        for task in tasks:
            folder = os.path.join(a.out, f"{name}-{task}")
            summary = os.path.join(folder, "cv.json")
            seeds = a.seeds.split(",")[0] if name == FINETUNE[0] else a.seeds
            cmd = [a.vggft, "cv", "--data", a.data, "--folds", "loso", "--seeds", seeds, "--out", folder, *a.extra.split(), *flags]
            if task == "multiclass":
                cmd += ["--task", "multiclass"]
            if name != FINETUNE[0]:
                # A row's first cv writes the pooled features its later cvs read: the
                # default's for every row that keeps its features, its own otherwise.
                dump = os.path.join(a.out, f"{name if own else 'default'}.features.safetensors")
                cmd += ["--load-features", dump] if os.path.exists(dump) else ["--dump-features", dump]
            wall = None
            if not os.path.exists(summary):
                print(f"== {name} {task}: {' '.join(cmd[1:])}", flush=True)
                t0 = time.time()
                with open(folder + ".log", "w") as log:
                    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
                wall = time.time() - t0
                with open(folder + ".wall", "w") as f:
                    f.write(f"{wall:.1f}\n")
                if rc != 0:
                    print(f"   failed (exit {rc}): see {folder}.log", flush=True)
                    lines.append(f"| {name} | {task} | failed (exit {rc}, {folder}.log) | | | | | |")
                    continue
            elif os.path.exists(folder + ".wall"):
                with open(folder + ".wall") as f:
                    wall = float(f.read())
            r = summarise(summary)
            took = "—" if wall is None else f"{wall / 60:.1f} min"
            lines.append(
                f"| {name} | {task} | {r['bacc']} | {r['seed_sd']} | {r['auc']} | {r['single']} | {r['one_class']} | {took} |"
            )
    lines += ["", "Rows (FLAGS):", ""] + [f"- `{name}` (`{' '.join(flags) or 'none'}`): {what}" for name, flags, _, _, what in rows]
    text = "\n".join(lines) + "\n"
    tmp = os.path.join(a.out, ".summary.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(a.out, "summary.md"))
    print(text)


if __name__ == "__main__":
    main()
