"""A vggft run as a PyTorch module, outside vggft.

    import vggft_model
    net = vggft_model.load("runs/latest")             # torch.nn.Module, eval mode
    x = vggft_model.preprocess("runs/latest", "face.jpg")  # float32 array (1, 3, S, S)
    probs = net(torch.from_numpy(x))                    # class probabilities, config.json's order

`load` rebuilds the network from the run's config.json and model.safetensors
with torchvision's layer names: the VGG16 trunk (plain, or with BatchNorm for
`--bn frozen|recalibrate|train`), the pooled features of `--features` and `--pool-grid`, the
`linear`, `bn` (optional hidden layer) or `vgg` head. Its output is the task
classes' probabilities (for a head trained on raw labels, each class's summed
raw probabilities). A subject-normalised run is rebuilt with its single-image
head (person statistics need other photos of the person), its probabilities
calibrated as `vggft predict` reports them where the run has a calibration.

`preprocess` asks the vggft binary for the exact network input (`vggft
preprocess`: the run's crop or face box, gray, resize, normalisation), so the
pixels match vggft's to the last bit.
"""
import hashlib
import json
import os
import subprocess
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
BLOCKS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class VggftNet(nn.Module):
    def __init__(self, config, tensors):
        super().__init__()
        model = config["model"]
        self.head_kind = model["head"]
        self.features_wanted = model.get("features") or ["conv5"]
        self.grid = tuple(int(n) for n in model.get("pool_grid", "1x1").split("x"))
        self.dropout = model.get("dropout", 0.5)
        has_bn = model["bn"] != "drop"
        div = model.get("width_div", 1)
        layers, c, idx = [], 3, 0
        self.block_ends = []  # index into `layers` after which a block ends (its pool)
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                self.block_ends.append(len(layers) - 1)
                idx += 1
                continue
            out = v // div
            conv = nn.Conv2d(c, out, 3, padding=1)
            conv.weight.data = tensors[f"features.{idx}.weight"]
            conv.bias.data = tensors[f"features.{idx}.bias"]
            layers.append(conv)
            idx += 1
            if has_bn:
                bn = nn.BatchNorm2d(out, eps=1e-5)
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, k).data = tensors[f"features.{idx}.{k}"]
                layers.append(bn)
                idx += 1
            layers.append(nn.ReLU())
            idx += 1
            c = out
        self.trunk = nn.ModuleList(layers)
        prefix = "head_global" if model.get("subject_norm") == "on" and "head_global.fc.weight" in tensors else "head"

        def linear(name):
            w = tensors[f"{name}.weight"]
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data, lin.bias.data = w, tensors[f"{name}.bias"]
            return lin

        def norm1d(name):
            n = nn.BatchNorm1d(tensors[f"{name}.weight"].shape[0], eps=1e-5)
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(n, k).data = tensors[f"{name}.{k}"]
            return n

        if self.head_kind == "vgg":
            self.fc6, self.fc7, self.fc8 = linear("classifier.0"), linear("classifier.3"), linear("classifier.6")
        elif self.head_kind == "bn":
            self.norm = norm1d(f"{prefix}.norm")
            self.hidden = linear(f"{prefix}.hidden") if f"{prefix}.hidden.weight" in tensors else None
            self.hidden_norm = norm1d(f"{prefix}.hidden_norm") if self.hidden is not None else None
            self.fc = linear(f"{prefix}.fc")
        else:
            self.fc = linear(f"{prefix}.fc")
        raw_to_task = config.get("raw_to_task") or []
        if prefix == "head_global" and model.get("single_labels") == "task":
            raw_to_task = []  # the single-image head learnt the task's classes directly
        n_classes = len(config["classes"])
        m = torch.zeros(len(raw_to_task) or n_classes, n_classes)
        for r, t in enumerate(raw_to_task or range(n_classes)):
            m[r, t] = 1.0
        self.register_buffer("to_task", m)
        # The single-image head's probabilities as vggft reports them, set by the inner fits: Platt scaling for two
        # classes, a temperature for more (configs of 2026-12-03 kept it under "threshold").
        cal = config.get("calibration") or (config.get("threshold") or {}).get("calibration")
        self.calibration = (cal["scale"], cal["shift"]) if cal and prefix == "head_global" else None

    def forward(self, x):
        maps = []
        block = 0
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self.block_ends:
                if BLOCKS[block] in self.features_wanted:
                    maps.append(x)
                block += 1
        if self.head_kind == "vgg":
            f = adaptive_avg(x, 7, 7)
            logits = self.fc8(F.relu(self.fc7(F.relu(self.fc6(f)))))
        elif self.head_kind == "bn":
            h = self.norm(self.pooled(maps, True))
            if self.hidden is not None:
                h = self.hidden_norm(F.relu(self.hidden(h)))
            logits = self.fc(h)
        else:
            logits = self.fc(self.pooled(maps, False))
        if self.calibration is not None:
            # Each task class's log-probability from the logits (exact in float32 where the probabilities would
            # underflow; vggft floors each probability at 1e-300, i.e. the log at −690.8).
            scale, shift = self.calibration
            lp = torch.log_softmax(logits, 1)
            lt = torch.stack([torch.logsumexp(lp.masked_fill(self.to_task[:, c] == 0, float("-inf")), 1)
                              for c in range(self.to_task.shape[1])], 1).clamp(min=-690.8)
            if lt.shape[1] == 2:
                # P(first) = σ(scale · z + shift), z the head's log-odds of the two classes.
                p0 = torch.sigmoid(scale * (lt[:, 0] - lt[:, 1]) + shift)
                return torch.stack([p0, 1 - p0], 1)
            return torch.softmax(scale * lt, 1)  # P ∝ p^scale: a temperature
        return torch.softmax(logits, 1) @ self.to_task

    def pooled(self, maps, with_max):
        """vggft's head input: per block the global average, the global maximum
        (bn head) and each cell's average of the `pool_grid` (unless 1x1)."""
        parts = []
        for m in maps:
            parts.append(F.adaptive_avg_pool2d(m, 1).flatten(1))
            if with_max:
                parts.append(F.adaptive_max_pool2d(m, 1).flatten(1))
            if self.grid != (1, 1):
                parts.append(adaptive_avg(m, *self.grid))
        return torch.cat(parts, 1)


def adaptive_avg(x, rows, cols):
    """torch's adaptive_avg_pool2d(x, (rows, cols)).flatten(1) as a fixed
    averaging matrix over the (static) input size, so ONNX export works for
    any size (its exporter refuses bins that do not divide the input)."""
    h, w = int(x.shape[2]), int(x.shape[3])  # constants when traced for export
    p = np.zeros((rows * cols, h, w), np.float32)
    for i in range(rows):
        y0, y1 = (i * h) // rows, -((-(i + 1) * h) // rows)
        for j in range(cols):
            x0, x1 = (j * w) // cols, -((-(j + 1) * w) // cols)
            p[i * cols + j, y0:y1, x0:x1] = 1.0 / ((y1 - y0) * (x1 - x0))
    # (N, C, rows·cols), then channel-major like torch's flatten of (N, C, rows, cols).
    return torch.einsum("nchw,khw->nck", x, torch.from_numpy(p)).flatten(1)


def load(run_dir):
    """The run's network (eval mode); its output is the class probabilities in config.json's order."""
    config = json.load(open(os.path.join(run_dir, "config.json")))
    model = os.path.join(run_dir, "model.safetensors")
    # As vggft loads a run: another run's model copied over this one's is refused (its threshold and calibration
    # were set for this run's own); runs from before config.json kept the hash are not checked.
    want = config.get("model_sha256")
    if want and hashlib.sha256(open(model, "rb").read()).hexdigest() != want:
        raise SystemExit(f"error: {model}: is not the model this run trained (its SHA-256 differs from the one in config.json)")
    tensors = {k: v.float() for k, v in load_file(model).items()}
    return VggftNet(config, tensors).eval()


def preprocess(run_dir, image_path, binary=None):
    """The exact network input of one image, float32 (1, 3, S, S), from `vggft preprocess`."""
    binary = binary or os.path.join(ROOT, "target", "release", "vggft")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "input.safetensors")
        subprocess.run([binary, "preprocess", image_path, "--model", run_dir, "--out", out], check=True, capture_output=True)
        return load_file(out)["input"].float().numpy()
