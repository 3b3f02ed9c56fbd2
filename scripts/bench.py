#!/usr/bin/env python3
"""`make bench`: vggft against the PyTorch eager reference (scripts/reference.py),
side by side in one run on this machine, as ratios.

Every command runs as its own process; wall time and peak resident memory
(ru_maxrss from wait4) are taken per process. Writes OUT/bench.csv and
OUT/bench.md and prints the table.

Environment: BENCH_OUT (default runs/bench), BENCH_SIZE (224), BENCH_CV=0 skips
the 10-fold x 3-seed cross-validation, BENCH_QUICK=1 shrinks everything (64 px,
3 folds, 1 seed) to check the script itself, BENCH_ONLY=finetune (speed, the
whole fine-tune and predict only; BENCH_ONLY=predict: speed, vggft's
fine-tune without the reference's, and predict; BENCH_ONLY=cv: speed and the
cross-validations only), BENCH_DEVICE (cpu; with a GPU present the
CUDA rows, f32 and --amp, are added).
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "vggft")
PY = sys.executable
DATA = os.environ.get("BENCH_DATA", os.path.join(ROOT, "..", "shared", "data", "london-faces", "manifest.csv"))
WEIGHTS = os.environ.get("BENCH_WEIGHTS", os.path.join(ROOT, "weights", "vgg16-hed.safetensors"))
ONLY = os.environ.get("BENCH_ONLY", "")
OUT = os.path.abspath(os.environ.get("BENCH_OUT", os.path.join(ROOT, "runs", f"bench-{ONLY}" if ONLY else "bench")))
QUICK = os.environ.get("BENCH_QUICK") == "1"
SIZE = int(os.environ.get("BENCH_SIZE", "64" if QUICK else "224"))
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
CV = os.environ.get("BENCH_CV", "1") == "1"
# BENCH_ONLY=finetune runs only speed, the whole-fine-tune comparison and predict (into runs/bench-finetune);
# BENCH_ONLY=predict speed, vggft's fine-tune (a model to load) and predict (into runs/bench-predict);
# BENCH_ONLY=cv speed and the cross-validations (into runs/bench-cv).
PREDICT_RUNS = 5


def run(cmd, label):
    """Runs cmd, returns (stdout, stderr, seconds, peak RSS in MiB); exits on failure."""
    print(f"[bench] {label}: {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    out_f, err_f = open(os.path.join(OUT, f"{label}.out"), "w+"), open(os.path.join(OUT, f"{label}.err"), "w+")
    # Every command computes what it times: no pooled features from an earlier run's feature cache.
    p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, cwd=OUT, env={**os.environ, "VGGFT_FEATURE_CACHE": "off"})
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    out_f.seek(0)
    err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"[bench] {label} failed (exit {code}):\n{err[-3000:]}")
    return out, err, secs, ru.ru_maxrss / 1024.0


def history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def cache_seconds(err):
    m = re.search(r"cached the frozen \w+ output.* in ([0-9.]+)s", err)
    return float(m.group(1)) if m else float("nan")


def main():
    if not os.path.exists(DATA):
        sys.exit(f"[bench] {DATA}: dataset not found (set BENCH_DATA)")
    if not os.path.exists(WEIGHTS):
        sys.exit(f"[bench] {WEIGHTS}: weights not found (make fetch-weights, or set BENCH_WEIGHTS)")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    # --subject-norm off: the globally normalised fine-tune, which the reference reproduces (the
    # bundled pairs default to person statistics and the probe since 2026-12-04).
    # (`--out OUT` stays last: the cv rows replace it.)
    common = ["--data", DATA, "--weights", WEIGHTS, "--image-size", str(SIZE), "--device", DEVICE, "--subject-norm", "off", "--out", OUT]
    rows = []

    def row(item, vggft, reference, unit, target="", note=""):
        ratio = reference / vggft if vggft and reference else None
        rows.append({"item": item, "vggft": vggft, "reference": reference, "unit": unit, "speedup": ratio, "target": target, "note": note})

    # 1-2. matmul peak and forward throughput.
    out, _, _, _ = run([BIN, "speed", "--json", "--image-size", str(SIZE), "--device", DEVICE, "--reps", "3"], "speed")
    sp = json.loads(out)
    peak = sp["matmul_f32_gflops"]
    row("libtorch matmul peak f32 (2048³)", peak, None, "GFLOP/s")
    # null where the CPU has no bf16 arithmetic (libtorch emulates it, ~10x slower): the bf16 rows are skipped.
    has_bf16 = DEVICE != "cpu" or sp["matmul_bf16_gflops"] is not None
    no_bf16 = "skipped: this CPU has no bf16 arithmetic (no AMX-BF16 or AVX512-BF16; libtorch emulates it, ~10x slower)"
    row("libtorch matmul peak bf16 (2048³)", sp["matmul_bf16_gflops"], None, "GFLOP/s", "", "" if has_bf16 else no_bf16)
    one_forward = None
    for f in sp["forward"]:
        pk = sp["matmul_bf16_gflops"] if f["precision"] == "bf16" else peak
        wino = f.get("convolution") == "winograd"
        row(
            f"forward {f['precision']}{' winograd (every conv but the first)' if wino else ''} batch {f['batch']} at {SIZE} px",
            f["images_per_s"],
            None,
            "images/s",
            "≥ 85 % of peak" if f["precision"] == "f32" and f["batch"] > 1 and not wino else "",
            f"{f['gflops']:.1f} GFLOP/s = {100 * f['gflops'] / pk:.0f} % of the {f['precision']} matmul peak"
            + (" in direct-convolution FLOPs (Winograd does fewer); a frozen pass: cache builds, evaluation" if wino else ""),
        )
        if f["precision"] == "f32" and f["batch"] == 1 and not wino:
            one_forward = f["seconds_per_batch"]

    if not ONLY:
        # 3. one conv5 + head epoch, batch 16, flip: cached, uncached, reference.
        ep = ["finetune", *common, "--val", "none", "--augment", "flip", "--batch-size", "16"]
        _, err, _, rss_c = run([BIN, *ep, "--stages", "conv5:2", "--cache-views", "2", "--name", "epoch-cached"], "epoch-cached")
        h = history(os.path.join(OUT, "epoch-cached"))
        cached = sum(float(r["seconds"]) for r in h) / len(h)
        _, _, _, rss_u = run([BIN, *ep, "--stages", "conv5:1", "--no-cache", "--name", "epoch-uncached"], "epoch-uncached")
        uncached = float(history(os.path.join(OUT, "epoch-uncached"))[0]["seconds"])
        bf16 = rss_b = None
        if has_bf16:
            _, err_b, _, rss_b = run([BIN, *ep, "--stages", "conv5:2", "--cache-views", "2", "--precision", "bf16", "--name", "epoch-bf16"], "epoch-bf16")
            hb = history(os.path.join(OUT, "epoch-bf16"))
            bf16 = sum(float(r["seconds"]) for r in hb) / len(hb)
        out, _, _, rss_r = run([PY, os.path.join(ROOT, "scripts", "reference.py"), "epoch", "--data", DATA, "--weights", WEIGHTS, "--image-size", str(SIZE)], "epoch-reference")
        ref_epoch = json.loads(out)["epoch_seconds"]
        cache_note = f"cache pass (conv1–4, 2 views of 204 images) {cache_seconds(err):.1f} s once"
        row("conv5 epoch, vggft cached f32", cached, ref_epoch, "s", "≥ 4× faster", cache_note)
        row("conv5 epoch, vggft cached bf16", bf16, ref_epoch if has_bf16 else None, "s", "", f"cache pass {cache_seconds(err_b):.1f} s once" if has_bf16 else no_bf16)
        row("conv5 epoch, vggft uncached f32", uncached, ref_epoch, "s")
        row("peak memory, conv5 epoch cached / uncached", rss_c, rss_r, "MiB", "", f"uncached {rss_u:.0f} MiB" + (f", bf16 {rss_b:.0f} MiB" if has_bf16 else ""))

    if ONLY in ("", "finetune", "predict"):
        # 4. the whole default fine-tune, same split, same recipe.
        _, _, ft_s, ft_rss = run([BIN, "finetune", *common, "--name", "finetune"], "finetune")
        met = json.load(open(os.path.join(OUT, "finetune", "metrics.json")))
    if ONLY in ("", "finetune"):
        out, _, ref_s, ref_rss = run([PY, os.path.join(ROOT, "scripts", "reference.py"), "finetune", "--run", os.path.join(OUT, "finetune"), "--weights", WEIGHTS], "finetune-reference")
        ref = json.loads(out)
        va = met["validation"]
        row(
            "fine-tune (head:3 → conv5:12, early stopping; --subject-norm off), wall; the reference runs the epochs vggft ran",
            ft_s,
            ref_s,
            "s",
            "≥ 3× faster",
            f"val bacc vggft {va['balanced_accuracy']:.3f} / reference {ref['val_bacc']:.3f}; acc {va['accuracy']:.3f} / {ref['val_acc']:.3f}; "
            f"best epoch {met.get('best_epoch', '?')} / {ref['best_epoch']}",
        )
        row("peak memory, fine-tune", ft_rss, ref_rss, "MiB", "≤ reference and ≤ 3072 MiB")

    if ONLY in ("", "finetune", "predict"):
        # 5. predict one image, model load included: the median of PREDICT_RUNS processes (one
        # alone is at the mercy of the page cache and the scheduler: 0.21–0.26 s on one machine).
        img = os.path.join(os.path.dirname(DATA), "smiling", sorted(os.listdir(os.path.join(os.path.dirname(DATA), "smiling")))[0])
        _, _, start_s, _ = run([BIN, "--version"], "startup")
        runs = []
        for k in range(PREDICT_RUNS):
            _, err, pr_s, pr_rss = run([BIN, "predict", img, "--model", os.path.join(OUT, "finetune"), "--device", DEVICE, "--timings"], f"predict{k}")
            m = re.search(r"model load ([0-9.]+) s, decode \+ forward ([0-9.]+) s", err)
            runs.append((float(m.group(1)) + float(m.group(2)), float(m.group(1)), pr_s, pr_rss))
        mid = lambda i: sorted(r[i] for r in runs)[len(runs) // 2]
        inproc, load, pr_s = mid(0), mid(1), mid(2)
        pr_rss = max(r[3] for r in runs)
        row(
            "predict one image: model load + decode + forward",
            inproc,
            None,
            "s",
            "≤ 2× one forward",
            f"{inproc / one_forward:.2f}× one batch-1 forward ({one_forward:.3f} s); load {load:.3f} s; medians of {PREDICT_RUNS} runs",
        )
        row(
            "predict one image: process wall",
            pr_s,
            None,
            "s",
            "",
            f"{pr_s / one_forward:.2f}× one forward; of which process start-up (libtorch initialisation, `vggft --version`) {start_s:.2f} s; peak {pr_rss:.0f} MiB",
        )

    # 6. 10-fold subject-grouped cv x 3 seeds, conv5 + head, 12 epochs, flip.
    if CV and ONLY in ("", "cv"):
        folds, seeds = ("3", "0") if QUICK else ("10", "0,1,2")
        cv = [BIN, "cv", *common[:-2], "--out", os.path.join(OUT, "cv"), "--folds", folds, "--seeds", seeds, "--augment", "flip", "--cache-views", "2"]
        _, _, cv_s, cv_rss = run(cv, "cv")
        summ = json.load(open(os.path.join(OUT, "cv", "cv.json")))
        b = next(s for s in summ["stats"] if s["metric"] == "balanced_accuracy")
        row(f"cv {folds} folds × seeds {seeds} (head:3 → conv5:12, flip), wall", cv_s, None, "s", "≤ 900 s", f"bacc {b['mean']:.3f} ± {b['std']:.3f}; peak {cv_rss:.0f} MiB")
        # bf16 on the same folds (seed 0's), against the f32 run's seed-0 folds.
        if not has_bf16:
            row(f"cv seed 0, {folds} folds, bf16", None, None, "s", "", no_bf16)
        else:
            _, _, bf_s, _ = run([*cv[:cv.index("--out")], "--out", os.path.join(OUT, "cv-bf16"), "--folds", folds, "--seeds", "0", "--augment", "flip", "--cache-views", "2", "--precision", "bf16"], "cv-bf16")
            def seed0(d):
                fs = [json.load(open(os.path.join(d, "folds", f))) for f in sorted(os.listdir(os.path.join(d, "folds"))) if f.startswith("seed0-")]
                v = [f["metrics"]["balanced_accuracy"] for f in fs]
                m = sum(v) / len(v)
                sd = (sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1)) ** 0.5
                return m, sd, sum(f["seconds"] for f in fs)
            f32m, f32sd, f32s = seed0(os.path.join(OUT, "cv"))
            bfm, bfsd, bfs = seed0(os.path.join(OUT, "cv-bf16"))
            row(
                f"cv seed 0, {folds} folds, bf16: summed fold time",
                bfs,
                None,
                "s",
                "",
                f"f32 on the same folds {f32s:.0f} s; bacc bf16 {bfm:.3f} ± {bfsd:.3f} vs f32 {f32m:.3f} ± {f32sd:.3f}; bf16 cv wall {bf_s:.0f} s",
            )

    # CUDA: the same epoch on the GPU, f32 and --amp, against the reference on the GPU.
    import torch

    if ONLY:
        pass
    elif DEVICE == "cpu" and torch.cuda.is_available():
        gcommon = ["--data", DATA, "--weights", WEIGHTS, "--image-size", str(SIZE), "--device", "cuda", "--subject-norm", "off", "--out", OUT]
        out, _, _, _ = run([BIN, "speed", "--json", "--image-size", str(SIZE), "--device", "cuda", "--reps", "5"], "cuda-speed")
        for f in json.loads(out)["forward"]:
            row(f"CUDA forward {f['precision']} batch {f['batch']}", f["images_per_s"], None, "images/s", "", f"{f['gflops']:.0f} GFLOP/s")
        gep = ["finetune", *gcommon, "--val", "none", "--augment", "flip", "--batch-size", "16", "--stages", "conv5:2", "--cache-views", "2"]
        run([BIN, *gep, "--name", "cuda-epoch"], "cuda-epoch")
        run([BIN, *gep, "--amp", "--name", "cuda-epoch-amp"], "cuda-epoch-amp")
        out, _, _, _ = run([PY, os.path.join(ROOT, "scripts", "reference.py"), "epoch", "--data", DATA, "--weights", WEIGHTS, "--image-size", str(SIZE), "--device", "cuda"], "cuda-epoch-reference")
        gref = json.loads(out)["epoch_seconds"]
        for name in ("cuda-epoch", "cuda-epoch-amp"):
            h = history(os.path.join(OUT, name))
            row(f"CUDA conv5 epoch, vggft cached {'--amp' if 'amp' in name else 'f32'}", sum(float(r["seconds"]) for r in h) / len(h), gref, "s")
    elif DEVICE == "cpu":
        print("[bench] CUDA: no GPU here (torch.cuda.is_available() is false): the CUDA rows are skipped", file=sys.stderr)
        row("CUDA rows", None, None, "", "", "skipped: no GPU on this machine")

    # Table and CSV.
    with open(os.path.join(OUT, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = [
        f"`make bench` on {os.uname().nodename}, {sp['threads']} threads, {DEVICE}, {SIZE} px, London faces ({DATA}); 'reference ÷ vggft' above 1 means vggft is faster or smaller",
        "",
        "| item | vggft | PyTorch reference | unit | reference ÷ vggft | target | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['item']} | {fmt(r['vggft'])} | {fmt(r['reference'])} | {r['unit']} | {fmt(r['speedup'])}{'×' if r['speedup'] else ''} | {r['target']} | {r['note']} |")
    open(os.path.join(OUT, "bench.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n[bench] wrote {os.path.join(OUT, 'bench.csv')} and bench.md", file=sys.stderr)


if __name__ == "__main__":
    main()
