#!/usr/bin/env python3
"""`make test`: a tiny run per head kind, exported to ONNX; ONNX Runtime on
`vggft_model.preprocess(...)` must give `vggft predict`'s probabilities
within 1e-3, and the PyTorch module the same.

  test_export.py [path/to/vggft]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402
import vggft_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "vggft"))
    # Removed afterwards, pass or fail: make test runs this on every call.
    with tempfile.TemporaryDirectory(prefix="vggft-export-") as d:
        check(binary, d)


def check(binary, d):
    rng = np.random.default_rng(1)
    for c in ("neutral", "happy", "sad"):
        os.makedirs(os.path.join(d, "data", c))
        for i in range(4):
            a = (rng.integers(40, 200) + rng.integers(-20, 20, (40, 48))).astype(np.uint8)
            Image.fromarray(a).save(os.path.join(d, "data", c, f"{i}.png"))
    # The same photos as 4 people with 3 each, for the subject-normalised runs (which export the single-image head).
    with open(os.path.join(d, "people.csv"), "w") as f:
        f.write("path,label,subject\n")
        for c in ("neutral", "happy", "sad"):
            for i in range(4):
                f.write(f"data/{c}/{i}.png,{c},P{i}\n")
    variants = {
        "bn": ["--head", "bn", "--crop", "center:0.9"],
        "linear": ["--head", "linear", "--features", "conv4,conv5", "--threshold", "0.3"],
        "raw": ["--head", "bn", "--hidden", "8", "--train-labels", "raw", "--pool-grid", "2x1"],
        "grid": ["--head", "linear", "--pool-grid", "2x3", "--image-size", "96"],  # conv5 3×3: cells of unequal size
        "vgg-bn": ["--head", "vgg", "--bn", "train"],
        # Single-image heads: on the task's classes (the default) and on the raw labels.
        "single-task": ["--data", "people.csv", "--subject-norm", "on", "--train-labels", "raw", "--threshold", "off"],
        "single-raw": ["--data", "people.csv", "--subject-norm", "on", "--train-labels", "raw", "--threshold", "off", "--single-labels", "raw"],
        # An inner threshold: the single-image head's probabilities calibrated, the threshold on them.
        "single-calibrated": ["--data", "people.csv", "--subject-norm", "on", "--train-labels", "raw", "--threshold", "inner"],
        # Three classes: the single-image head's probabilities at a fitted temperature.
        "multi-calibrated": ["--data", "people.csv", "--subject-norm", "on", "--task", "multiclass", "--calibrate", "inner"],
    }
    worst = 0.0
    for name, extra in variants.items():
        data = [] if "--data" in extra else ["--data", "data"]
        run = [binary, "finetune", *data, "--random-init", "--width-div", "16", "--device", "cpu",
               "--threads", "1", "--stages", "head:1,conv5:1", "--val", "none", "--name", name, "--quiet", *extra]
        if "--image-size" not in extra:
            run += ["--image-size", "32"]
        subprocess.run(run, cwd=d, check=True, capture_output=True)
        rd = os.path.join(d, "runs", name)
        path = export.export(rd)
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        cfg = json.load(open(os.path.join(rd, "config.json")))
        assert json.loads(meta["classes"]) == cfg["classes"], meta
        expected = {"linear": "0.3", "single-calibrated": repr(cfg.get("threshold", {}).get("single"))}.get(name)
        assert meta.get("threshold") == expected, (meta, cfg.get("threshold"))
        assert (name in ("single-calibrated", "multi-calibrated")) == ("calibration" in cfg), cfg.get("calibration")
        assert name != "multi-calibrated" or cfg["calibration"]["shift"] == 0.0, cfg["calibration"]
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        images = [os.path.join(d, "data", c, "1.png") for c in ("neutral", "happy", "sad")]
        out = subprocess.run([binary, "predict", *images, "--model", rd, "--format", "json", "--device", "cpu", "--tta", "none"], cwd=d, check=True, capture_output=True, text=True)
        want = {p["path"]: [p["probabilities"][c] for c in cfg["classes"]] for p in json.loads(out.stdout)}
        net = vggft_model.load(rd)
        for img in images:
            x = vggft_model.preprocess(rd, img, binary)
            got = sess.run(["probabilities"], {"input": x})[0][0]
            torch_got = net(torch.from_numpy(x)).detach().numpy()[0]
            diff = max(np.abs(got - want[img]).max(), np.abs(torch_got - want[img]).max())
            worst = max(worst, diff)
            assert diff < 1e-3, (name, img, got, torch_got, want[img])
        if name == "linear":
            # --out naming the model (a slip) is refused; the model stays.
            model = os.path.join(rd, "model.safetensors")
            before = open(model, "rb").read()
            try:
                export.export(rd, model)
                raise AssertionError("export over model.safetensors was not refused")
            except SystemExit as e:
                assert "give --out a name ending in .onnx" in str(e), e
            assert open(model, "rb").read() == before
            # Another run's model copied over this one's is refused, as vggft refuses it.
            other = os.path.join(d, "runs", next(n for n in variants if n != name), "model.safetensors")
            shutil.copy(other, model)
            try:
                export.export(rd, os.path.join(d, "swapped.onnx"))
                raise AssertionError("another run's model was exported")
            except SystemExit as e:
                assert "is not the model this run trained" in str(e), e
            open(model, "wb").write(before)
    print(f"test_export: ONNX Runtime and PyTorch match vggft predict on {len(variants)} runs, largest difference {worst:.1e}: ok")


if __name__ == "__main__":
    main()
