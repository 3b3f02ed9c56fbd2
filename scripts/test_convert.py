#!/usr/bin/env python3
"""Tests of fetch_weights.py's conversions, on small synthetic files made here
(no download): the HED fold against a direct computation in Caffe's input
convention, key layout, and the torchvision .pth path (prefix check,
weights_only loading). Run by `make test`; prints 'N passed, N failed'."""

import sys
import tempfile
import traceback
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_weights as fw  # noqa: E402

WIDTHS = [4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]


def make_hed(path, seed=0):
    rng = np.random.default_rng(seed)
    kernels = []
    with h5py.File(path, "w") as f:
        c_in = 3
        for group, c_out in zip(fw.HED_GROUPS, WIDTHS):
            k = rng.normal(0, 0.05, (3, 3, c_in, c_out)).astype(np.float32)
            b = rng.normal(0, 0.5, (c_out,)).astype(np.float32)
            f[f"{group}/vars/0"] = k
            f[f"{group}/vars/1"] = b
            kernels.append((k, b))
            c_in = c_out
        for i in range(1, 6):  # side outputs the converter must ignore
            f[f"dsn{i}/vars/0"] = np.zeros((1, 1, 4, 1), np.float32)
            f[f"dsn{i}/vars/1"] = np.zeros((1,), np.float32)
        f["fuse/vars/0"] = np.zeros((1, 1, 5, 1), np.float32)
        f["fuse/vars/1"] = np.zeros((1,), np.float32)
    return kernels


def test_hed_fold_matches_caffe_convention():
    with tempfile.TemporaryDirectory() as d:
        h5, out = Path(d) / "hed.h5", Path(d) / "out.safetensors"
        kernels = make_hed(h5)
        fw.convert_hed(h5, out)
        t = load_file(out)
        assert sorted(t) == sorted([f"features.{i}.{p}" for i in fw.PLAIN_CONV_IDX for p in ("weight", "bias")])
        # Layers after conv1_1: plain HWIO → OIHW transposes, bit for bit.
        for (k, b), idx in list(zip(kernels, fw.PLAIN_CONV_IDX))[1:]:
            assert torch.equal(t[f"features.{idx}.weight"], torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
            assert torch.equal(t[f"features.{idx}.bias"], torch.from_numpy(b))
        # conv1_1: the Caffe computation on BGR 0..255 minus the mean equals ours on
        # RGB [0,1] normalised with ImageNet statistics, away from the padded border.
        k, b = kernels[0]
        w_caffe = torch.from_numpy(k.transpose(3, 2, 0, 1).astype(np.float64).copy())
        rgb = torch.rand(2, 3, 20, 24, dtype=torch.float64)
        bgr = rgb.flip(1) * 255.0 - torch.tensor(fw.CAFFE_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
        y_caffe = F.conv2d(bgr, w_caffe, torch.from_numpy(b.astype(np.float64)), padding=1)
        mean = torch.tensor(fw.IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(fw.IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
        x = (rgb - mean) / std
        y_ours = F.conv2d(x, t["features.0.weight"].double(), t["features.0.bias"].double(), padding=1)
        scale = y_caffe.abs().max().item()
        interior = (y_caffe - y_ours)[..., 1:-1, 1:-1].abs().max().item()
        assert interior <= 1e-5 * scale, f"interior differs by {interior} (scale {scale})"
        # On the border the conventions pad different raw values: bounded by Σ|W|·|δ|.
        delta = (255.0 * mean.flatten() - torch.tensor(fw.CAFFE_MEAN_BGR[::-1], dtype=torch.float64)).abs()
        bound = (w_caffe.flip(1).abs() * delta.view(1, 3, 1, 1)).sum(dim=(1, 2, 3)).max().item()
        border = (y_caffe - y_ours).abs().max().item()
        assert border <= bound + 1e-4, f"border differs by {border}, bound {bound}"


def test_hed_layout_errors():
    with tempfile.TemporaryDirectory() as d:
        h5 = Path(d) / "bad.h5"
        with h5py.File(h5, "w") as f:
            f["block1/layers/conv2d/vars/0"] = np.zeros((3, 3, 3, 4), np.float32)
        try:
            fw.convert_hed(h5, Path(d) / "o.safetensors")
        except SystemExit as e:
            assert "missing" in str(e) and "bad.h5" in str(e), e
        else:
            raise AssertionError("a file without the HED layout must be refused")
        assert not (Path(d) / "o.safetensors").exists(), "no half-written output"


def test_pth_conversion_checks_prefix_and_loads_weights_only():
    with tempfile.TemporaryDirectory() as d:
        state = {"features.0.weight": torch.randn(4, 3, 3, 3, dtype=torch.float64), "features.0.bias": torch.randn(4)}
        pth = Path(d) / "vgg16-00000000.pth"
        torch.save(state, pth)
        try:
            fw.check_prefix(pth, fw.TORCHVISION["vgg16"])
        except SystemExit as e:
            assert "does not start with 397923af" in str(e), e
        else:
            raise AssertionError("a wrong SHA-256 prefix must be refused")
        # A file whose digest fits is converted, float64 → float32, same keys.
        fw.WEIGHTS = Path(d)
        digest = fw.sha256(pth)
        fw.TORCHVISION["test"] = f"test-{digest[:8]}.pth"
        fw.convert_pth(pth, "test")
        out = load_file(Path(d) / "test.safetensors")
        assert set(out) == set(state) and out["features.0.weight"].dtype == torch.float32
        assert fw.already_done(Path(d) / "test.safetensors"), "sidecar records the output's SHA-256"
        # A pickle that would run code is refused by weights_only=True.
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))
        evil = Path(d) / f"evil.pth"
        torch.save({"x": Evil()}, evil)
        fw.TORCHVISION["evil"] = f"evil-{fw.sha256(evil)[:8]}.pth"
        try:
            fw.convert_pth(evil, "evil")
        except SystemExit as e:
            assert "cannot load" in str(e), e
        else:
            raise AssertionError("weights_only must refuse arbitrary objects")


def main():
    tests = [v for k, v in globals().items() if k.startswith("test_")]
    failed = 0
    for t in tests:
        try:
            t()
            print(f"ok   {t.__name__}")
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAIL {t.__name__}")
            traceback.print_exc()
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
