#!/usr/bin/env python3
"""Grad-CAM in PyTorch, directly, against `vggft explain --arrays`.

Rebuilds a run's network in PyTorch from config.json + model.safetensors
(plain VGG16 trunk, `bn` or `linear` head, conv5 features, no per-subject
normalisation), takes the exact network input vggft saved for each image,
computes Grad-CAM at the same block output (after the block's pool) for the
same class with torch.autograd.grad, and compares heat and probabilities.
A class of a head trained on raw labels is scored by the log-sum-exp of its
raw labels' logits; a raw label explained alone (`--class HA`: the arrays
hold `raw_class`) by its own logit, its probability its softmax share.

  gradcam_check.py RUN EXPLAIN_DIR --layer conv5     compare, print the largest differences
  gradcam_check.py --self-test [path/to/vggft]       train a tiny run, explain it, compare (make test)

Exits non-zero when the heat differs by more than 1e-4 or a probability by more than 1e-5.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
BLOCKS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
HEAT_TOL, PROB_TOL = 1e-4, 1e-5


def forward(sd, cfg, x, layer):
    """Logits and the output of block `layer` (after its pool) of vggft's network."""
    model = cfg["model"]
    if model["bn"] not in ("drop",) or model["features"] != ["conv5"] or model["head"] not in ("bn", "linear") or model.get("subject_norm") == "on" or model.get("pool_grid", "1x1") != "1x1":
        sys.exit(f"gradcam_check.py covers plain trunks with a bn/linear head on conv5 features, not {model}")
    i, block, tapped = 0, 0, None
    for v in CFG:
        if v == "M":
            x = F.max_pool2d(x, 2)
            if BLOCKS[block] == layer:
                tapped = x
            block += 1
            i += 1
        else:
            x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
            i += 2
    avg = F.adaptive_avg_pool2d(x, 1).flatten(1)
    if model["head"] == "bn":
        f = torch.cat([avg, F.adaptive_max_pool2d(x, 1).flatten(1)], 1)
        f = F.batch_norm(f, sd["head.norm.running_mean"], sd["head.norm.running_var"], sd["head.norm.weight"], sd["head.norm.bias"], False, 0.0, 1e-5)
    else:
        f = avg
    return F.linear(f, sd["head.fc.weight"], sd["head.fc.bias"]), tapped


def class_scores(logits, cfg):
    raw_to_task = cfg.get("raw_to_task") or []
    if not raw_to_task:
        return logits
    return torch.stack([logits[:, [r for r, t in enumerate(raw_to_task) if t == c]].logsumexp(1) for c in range(len(cfg["classes"]))], 1)


def grad_cam(sd, cfg, gray, layer, cls, raw=None):
    pre = cfg["data"]["preprocess"]
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    s = gray.shape[-1]
    x = ((gray.view(1, 1, s, s).expand(1, 3, s, s) - mean) / std).requires_grad_(True)
    logits, a = forward(sd, cfg, x, layer)
    scores = class_scores(logits, cfg)
    raw_probs = torch.softmax(logits.double(), 1)
    probs = raw_probs
    raw_to_task = cfg.get("raw_to_task") or []
    if raw_to_task:
        probs = torch.stack([raw_probs[:, [r for r, t in enumerate(raw_to_task) if t == c]].sum(1) for c in range(len(cfg["classes"]))], 1)
    (g,) = torch.autograd.grad(scores[0, cls] if raw is None else logits[0, raw], a)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = F.interpolate(cam, size=(s, s), mode="bilinear", align_corners=False)
    m = up.max()
    heat = up / m if m > 0 else torch.zeros_like(up)
    return heat[0, 0].detach(), probs[0].detach(), None if raw is None else raw_probs[0, raw].item()


def compare(run, explain_dir, layer):
    cfg = json.load(open(os.path.join(run, "config.json")))
    sd = {k: v.float() for k, v in load_file(os.path.join(run, "model.safetensors")).items()}
    files = sorted(glob.glob(os.path.join(explain_dir, "*.safetensors")))
    if not files:
        sys.exit(f"{explain_dir}: no arrays (run vggft explain with --arrays)")
    worst_heat = worst_prob = 0.0
    raws = 0
    for f in files:
        t = load_file(f)
        raw = int(t["raw_class"][0]) if "raw_class" in t else None
        heat, probs, raw_prob = grad_cam(sd, cfg, t["input"].float(), layer, int(t["class"][0]), raw)
        worst_heat = max(worst_heat, (heat - t["heat"].float()).abs().max().item())
        worst_prob = max(worst_prob, (probs - t["probs"].double()).abs().max().item())
        if raw is not None:
            raws += 1
            worst_prob = max(worst_prob, abs(raw_prob - t["raw_prob"].double().item()))
    what = f" (raw label {cfg['raw_classes'][raw]})" if raws else ""
    print(f"{len(files)} image(s){what}, layer {layer}: largest heat difference {worst_heat:.2e}, largest probability difference {worst_prob:.2e}")
    return worst_heat <= HEAT_TOL and worst_prob <= PROB_TOL


def self_test(binary):
    binary = os.path.abspath(binary)
    # Removed afterwards, pass or fail: make test runs this on every call.
    with tempfile.TemporaryDirectory(prefix="vggft-gradcam-") as d:
        return _self_test(binary, d)


def _self_test(binary, d):
    rng = np.random.default_rng(0)
    # data: a (a white square) and b (none). data3: the same as a and
    # neutral, and c (a black square): its binary task, neutral vs the
    # rest, trains on the three raw labels.
    folders = {"a": ["data/a", "data3/a"], "b": ["data/b", "data3/neutral"], "c": ["data3/c"]}
    for c, dirs in folders.items():
        for i in range(6):
            a = (rng.integers(60, 140) + rng.integers(-10, 10, (64, 64))).astype(np.uint8)
            # Each square textured: a flat one gives equal activations, and
            # which of equal maxima a max pool passes the gradient to depends
            # on the memory layout (vggft runs channels-last; this script's
            # contiguous tensors picked another on one image: heat 0.25 apart,
            # 0 when the script ran channels-last too).
            if c == "a":
                a[40:52, 8:20] = rng.integers(235, 255, (12, 12))
            if c == "c":
                a[8:20, 40:52] = rng.integers(0, 20, (12, 12))
            for f in dirs:
                os.makedirs(os.path.join(d, f), exist_ok=True)
                Image.fromarray(a).save(os.path.join(d, f, f"{i}.png"))
    run = [binary, "finetune", "--data", "data", "--task", "multiclass", "--random-init", "--width-div", "16", "--image-size", "64",
           "--device", "cpu", "--threads", "1", "--stages", "head:1,conv4:2", "--val", "none", "--name", "g", "--quiet"]
    subprocess.run(run, cwd=d, check=True, capture_output=True)
    ok = True
    for layer in ("conv5", "conv3"):
        out = os.path.join(d, f"ex-{layer}")
        subprocess.run([binary, "explain", "data/a", "data/b", "--model", "runs/g", "--layer", layer, "--out", out, "--arrays", "--device", "cpu"],
                       cwd=d, check=True, capture_output=True)
        ok &= compare(os.path.join(d, "runs", "g"), out, layer)
    run3 = [binary, "finetune", "--data", "data3", "--random-init", "--width-div", "16", "--image-size", "64", "--device", "cpu", "--threads", "1",
            "--stages", "head:1,conv4:2", "--val", "none", "--name", "g3", "--quiet"]
    subprocess.run(run3, cwd=d, check=True, capture_output=True)
    # The answered class (the log-sum-exp of its raw logits), and each raw label alone.
    for cls in (None, "a", "c"):
        out = os.path.join(d, f"ex3-{cls}")
        subprocess.run([binary, "explain", "data3/a", "data3/c", "--model", "runs/g3", "--layer", "conv3", "--out", out, "--arrays", "--device", "cpu"]
                       + (["--class", cls] if cls else []), cwd=d, check=True, capture_output=True)
        ok &= compare(os.path.join(d, "runs", "g3"), out, "conv3")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?")
    ap.add_argument("explain_dir", nargs="?")
    ap.add_argument("--layer", default="conv5")
    ap.add_argument("--self-test", nargs="?", const=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release", "vggft"))
    a = ap.parse_args()
    ok = self_test(a.self_test) if a.self_test else compare(a.run, a.explain_dir, a.layer)
    print("gradcam_check: " + ("ok" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
