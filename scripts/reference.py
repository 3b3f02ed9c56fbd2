#!/usr/bin/env python3
"""PyTorch eager reference for `make bench`.

Builds the same network as vggft (torchvision VGG16 trunk, vggft's `bn` head:
avg+max pool -> BatchNorm1d -> dropout -> linear) from the same safetensors
file and trains it the way a typical user writes it: NCHW tensors, every batch
through the whole network, no cache. Images are decoded once with Pillow
(gray, centre square, bilinear resize), as a small-data script would.

  reference.py epoch --data M.csv --weights W     one conv5+head epoch (batch 16, flip)
  reference.py finetune --run RUN                 the run's recipe, split and epochs per stage

Prints one JSON object on stdout.
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BLOCKS = ["conv1", "conv2", "conv3", "conv4", "conv5", "head"]


class Net(nn.Module):
    def __init__(self, classes, dropout):
        super().__init__()
        layers, c, self.block_of = [], 3, {}
        block = 0
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                block += 1
            else:
                self.block_of[len(layers)] = block
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.norm = nn.BatchNorm1d(2 * c)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        f = self.features(x)
        x = torch.cat([F.adaptive_avg_pool2d(f, 1).flatten(1), F.adaptive_max_pool2d(f, 1).flatten(1)], 1)
        return self.fc(self.drop(self.norm(x)))

    def block(self, name):
        if not name.startswith("features."):
            return 5
        return self.block_of[int(name.split(".")[1])]


def build(weights, classes, dropout):
    net = Net(classes, dropout)
    sd = load_file(weights)
    own = {k: v for k, v in sd.items() if k.startswith("features.")}
    missing = [k for k in net.state_dict() if k.startswith("features.") and k not in own]
    if missing:
        sys.exit(f"{weights}: lacks {missing[0]}")
    net.load_state_dict(own, strict=False)
    return net


def load_images(paths, size):
    out = np.zeros((len(paths), 1, size, size), np.float32)
    for i, p in enumerate(paths):
        im = Image.open(p).convert("L")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.BILINEAR)
        out[i, 0] = np.asarray(im, np.float32) / 255.0
    return torch.from_numpy(out)


def normalise(gray):
    return (gray.expand(-1, 3, -1, -1) - MEAN.to(gray.device)) / STD.to(gray.device)


def augment(gray, a, rng):
    """vggft's augmentation: flip, rotation, zoom, translation (one affine warp, border padding), contrast, brightness."""
    n = gray.shape[0]
    sym = lambda m: rng.uniform(-m, m) if m > 0 else 0.0
    theta, gain, shift = [], [], []
    for _ in range(n):
        flip = -1.0 if a["flip"] and rng.random() < 0.5 else 1.0
        r = math.radians(sym(a["rotate"]))
        s = 1.0 / (1.0 + sym(a["zoom"]))
        tx, ty = 2 * sym(a["translate"]), 2 * sym(a["translate"])
        theta.append([[s * math.cos(r) * flip, -s * math.sin(r), tx], [s * math.sin(r) * flip, s * math.cos(r), ty]])
        gain.append(1.0 + sym(a["contrast"]))
        shift.append(sym(a["brightness"]))
    grid = F.affine_grid(torch.tensor(theta, device=gray.device), list(gray.shape), align_corners=False)
    x = F.grid_sample(gray, grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = x.mean((1, 2, 3), keepdim=True)
    g, s = torch.tensor(gain, device=x.device).view(-1, 1, 1, 1), torch.tensor(shift, device=x.device).view(-1, 1, 1, 1)
    return ((x - m) * g + m + s).clamp(0, 1)


def optimizer(net, lr, factor, momentum, wd):
    groups = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        b = net.block(name)
        decay = p.dim() > 1
        g = groups.setdefault((b, decay), {"params": [], "mult": factor ** (5 - b), "weight_decay": wd if decay else 0.0})
        g["params"].append(p)
    opt = torch.optim.SGD([dict(params=g["params"], lr=lr * g["mult"], weight_decay=g["weight_decay"]) for g in groups.values()], lr=lr, momentum=momentum)
    return opt, [g["mult"] for g in groups.values()]


def freeze_below(net, block):
    for name, p in net.named_parameters():
        p.requires_grad_(net.block(name) >= block)


def schedule(step, total, warmup):
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * t))


def batches(order, bs):
    out = [order[i : i + bs] for i in range(0, len(order), bs)]
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2] = out[-2] + out.pop()
    return out


def manifest(path):
    root = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return [os.path.normpath(os.path.join(root, r["path"])) for r in rows], [0 if r["label"] == "neutral" else 1 for r in rows]


def epoch_cmd(a):
    torch.manual_seed(0)
    rng = random.Random(0)
    t0 = time.perf_counter()
    paths, y = manifest(a.data)
    gray = load_images(paths, a.image_size)
    load_s = time.perf_counter() - t0
    dev = torch.device(a.device)
    net = build(a.weights, 2, 0.5).to(dev)
    freeze_below(net, 4)
    net.train()
    opt, _ = optimizer(net, 0.003, 0.1, 0.9, 1e-4)
    y = torch.tensor(y).to(dev)
    gray = gray.to(dev)
    flip = {"flip": True, "rotate": 0, "zoom": 0, "translate": 0, "contrast": 0, "brightness": 0}
    order = list(range(len(paths)))
    rng.shuffle(order)
    t1 = time.perf_counter()
    for b in batches(order, 16):
        x = normalise(augment(gray[b], flip, rng))
        loss = F.cross_entropy(net(x), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"epoch_seconds": time.perf_counter() - t1, "load_seconds": load_s, "images": len(paths)}))


def evaluate(net, x, y, cw):
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(normalise(x[i : i + 32])) for i in range(0, len(x), 32)])
    loss = F.cross_entropy(logits, y, weight=cw).item()
    pred = logits.argmax(1)
    acc = (pred == y).float().mean().item()
    recalls = [((pred == c) & (y == c)).sum().item() / max((y == c).sum().item(), 1) for c in range(cw.numel()) if (y == c).any()]
    return loss, acc, sum(recalls) / len(recalls)


def finetune_cmd(a):
    t0 = time.perf_counter()
    cfg = json.load(open(os.path.join(a.run, "config.json")))
    tc, mc = cfg["train"], cfg["model"]
    classes = cfg["classes"]
    with open(os.path.join(a.run, "split.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [r["path"] for r in rows]
    y = torch.tensor([classes.index(r["class"]) for r in rows])
    side = [r["side"] for r in rows]
    gray = load_images(paths, cfg["data"]["preprocess"]["image_size"])
    tr = [i for i, s in enumerate(side) if s == "train"]
    va = [i for i, s in enumerate(side) if s == "val"]
    counts = torch.bincount(y[tr], minlength=len(classes)).float()
    cw = len(tr) / (len(classes) * counts.clamp(min=1))
    torch.manual_seed(tc["seed"])
    rng = random.Random(tc["seed"])
    net = build(a.weights or cfg["weights"]["path"], len(classes), mc["dropout"])
    # The same epochs as the vggft run (its history.csv), so both do equal work;
    # the best validation-loss epoch is kept, as vggft does.
    with open(os.path.join(a.run, "history.csv"), newline="") as f:
        ran = [int(r["stage"]) for r in csv.DictReader(f)]
    stages = [dict(st, epochs=ran.count(i + 1)) for i, st in enumerate(tc["stages"])]
    best, best_loss, best_epoch, epoch = None, float("inf"), 0, 0
    for st in stages:
        freeze_below(net, BLOCKS.index(st["from"]))
        opt, mults = optimizer(net, tc["lr"], tc["block_lr_factor"], tc["momentum"], tc["weight_decay"])
        steps = len(batches(tr, tc["batch_size"]))
        # The schedule spans the stage's configured epochs, as in vggft (early stopping only cuts it short).
        planned = next(x["epochs"] for x in tc["stages"] if x["from"] == st["from"])
        total, warm = steps * planned, round(tc["warmup"] * steps * planned)
        for e in range(st["epochs"]):
            epoch += 1
            net.train()
            order = tr[:]
            rng.shuffle(order)
            for bi, b in enumerate(batches(order, tc["batch_size"])):
                f = schedule(e * steps + bi, total, warm)
                for g, m in zip(opt.param_groups, mults):
                    g["lr"] = tc["lr"] * m * f
                x = normalise(augment(gray[b], tc["augment"], rng))
                loss = F.cross_entropy(net(x), y[b], weight=cw)
                opt.zero_grad()
                loss.backward()
                opt.step()
            vl, vacc, vbacc = evaluate(net, gray[va], y[va], cw)
            print(f"epoch {epoch}: val loss {vl:.4f} acc {vacc:.3f} bacc {vbacc:.3f}", file=sys.stderr)
            if vl < best_loss:
                best_loss, best_epoch = vl, epoch
                best = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best)
    _, acc, bacc = evaluate(net, gray[va], y[va], cw)
    print(json.dumps({"val_acc": acc, "val_bacc": bacc, "best_epoch": best_epoch, "epochs": epoch, "seconds": time.perf_counter() - t0}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("epoch")
    e.add_argument("--data", required=True)
    e.add_argument("--weights", required=True)
    e.add_argument("--image-size", type=int, default=224)
    e.add_argument("--device", default="cpu")
    f = sub.add_parser("finetune")
    f.add_argument("--run", required=True)
    f.add_argument("--weights")
    a = p.parse_args()
    epoch_cmd(a) if a.cmd == "epoch" else finetune_cmd(a)


if __name__ == "__main__":
    main()
