#!/usr/bin/env python3
"""Export a vggft run to ONNX: RUN/model.onnx.

  .venv/bin/python scripts/export.py RUN [--out FILE]

The graph takes the network input of `vggft preprocess` (float32, N×3×S×S:
the run's crop, gray replicated to RGB, ImageNet normalisation) and returns
the class probabilities in the order of config.json's `classes`. The ONNX
metadata holds `classes` and `preprocess` (JSON, as in config.json), the
vggft version and, for a two-class run that decides at a threshold, that
`threshold` on P(first class) (answer the first class at or above it). Rebuilt in PyTorch by scripts/vggft_model.py; checked against
`vggft predict` by scripts/test_export.py (part of `make test`).
"""
import argparse
import json
import os
import sys
import warnings

import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vggft_model  # noqa: E402


def exported_threshold(cfg):
    """The run's threshold on P(first class) for the exported head (a
    subject-normalised run exports its single-image head), or None: the
    larger probability decides."""
    t = cfg.get("threshold")
    if not t:
        return None
    return t.get("single", t["person"]) if cfg["model"].get("subject_norm") == "on" else t["person"]


def export(run, out=None):
    cfg = json.load(open(os.path.join(run, "config.json")))
    net = vggft_model.load(run)
    s = cfg["data"]["preprocess"]["image_size"]
    out = out or os.path.join(run, "model.onnx")
    # A slip such as `--out RUN/model.safetensors` must not replace the model.
    if not out.endswith(".onnx"):
        raise SystemExit(f"error: {out}: the export is an ONNX file: give --out a name ending in .onnx")
    tmp = out + ".tmp"
    # The 7×7 pooling matrix is a constant of the traced size, by design.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    torch.onnx.export(net, torch.zeros(1, 3, s, s), tmp, input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17, dynamo=False)
    m = onnx.load(tmp)
    meta = {"classes": json.dumps(cfg["classes"]), "preprocess": json.dumps(cfg["data"]["preprocess"]), "vggft_version": cfg.get("vggft_version", "")}
    t = exported_threshold(cfg)
    if t is not None:
        meta["threshold"] = repr(t)
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, tmp)
    os.replace(tmp, out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out")
    a = ap.parse_args()
    print(export(a.run, a.out))


if __name__ == "__main__":
    main()
