#!/usr/bin/env python3
"""Feeds vggft every kind of bad input the reliability issue lists and prints a
Markdown table: input, what vggft said (its error or warning line), exit code.

  .venv/bin/python scripts/bad_inputs.py [path/to/vggft]

Runs small networks (--width-div 16, 32 px, random or tiny weights) in a
temporary folder; takes about a minute. The tests assert the same messages;
this script is the human-readable inventory.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "vggft")
SMALL = ["--width-div", "16", "--image-size", "32", "--device", "cpu", "--threads", "1", "--stages", "head:1"]
W = os.path.join(ROOT, "weights", "vgg16-hed.safetensors")
rows = []


def vggft(*args, cwd):
    p = subprocess.run([BIN, *args], cwd=cwd, capture_output=True, text=True, errors="replace")
    return p.returncode, p.stdout, p.stderr


def said(err, out="", want=("error", "warning", "interrupted")):
    # The CPU tip (AMX) depends on the machine, not on the input.
    lines = [l for l in (err + "\n" + out).splitlines() if l.strip() and not l.startswith("this CPU has")]
    hits = [l for l in lines if l.startswith(want)]
    return (hits or lines or ["(nothing)"])[0].strip()


TMP = []


def record(what, code, msg):
    for t in TMP:
        msg = msg.replace(t + "/", "…/")
    rows.append((what.replace("|", "\\|"), msg.replace("|", "\\|"), code))
    print(f"{code:>3}  {what}: {msg}", file=sys.stderr)


def png(path, w=32, h=32, value=None, mode="L"):
    a = (np.arange(w * h).reshape(h, w) % 251).astype(np.uint8) if value is None else np.full((h, w), value, np.uint8)
    Image.fromarray(a).convert(mode).save(path)


def files_under(folder):
    """Every file under `folder` (but the lock, which names its last writer) with its bytes."""
    return {os.path.relpath(os.path.join(r, f), folder): open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(folder) for f in fs if f != ".lock"}


def folders(root, per_class=4):
    for c, v in (("neutral", 40), ("happy", 200)):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            png(os.path.join(root, c, f"{i:02}.png"), value=v + i)


def tiff_header(w, h):
    """A little-endian 8-bit gray TIFF header claiming w×h pixels, with 8 bytes of data."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 4, 1, h), (279, 4, 1, 8)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(8)


def main():
    d = tempfile.mkdtemp(prefix="vggft-bad-")
    TMP.append(d)
    try:
        run_inventory(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print("| bad input | what vggft says | exit |")
    print("|---|---|---|")
    for what, msg, code in rows:
        # A message that quotes a command in backticks needs a longer fence to stay one code span.
        fence = "``" if "`" in msg else "`"
        pad = " " if "`" in msg else ""
        print(f"| {what} | {fence}{pad}{msg}{pad}{fence} | {code} |")


def run_inventory(d):
    # A tiny trained run to predict with.
    good = os.path.join(d, "good")
    folders(good)
    code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL, "--val", "none", "--name", "ok", "--quiet", cwd=d)
    assert code == 0, err
    img = os.path.join(d, "img")
    os.makedirs(img)

    def predict_case(what, name, data=None, make=None):
        p = os.path.join(img, name)
        if make:
            make(p)
        elif data is not None:
            open(p, "wb").write(data)
        code, out, err = vggft("predict", p, "--model", "runs/ok", cwd=d)
        record(what, code, said(err, out if code == 0 else "", want=("error", "warning", p)) if code else "works: " + out.strip().split("\n")[0].replace(d + "/", ""))

    ok_png = os.path.join(d, "ok.png")
    png(ok_png)
    ok_jpg = os.path.join(d, "ok.jpg")
    Image.open(ok_png).convert("RGB").save(ok_jpg)
    tif = os.path.join(d, "ok.tiff")
    Image.open(ok_png).save(tif)
    predict_case("zero-byte file", "empty.tiff", b"")
    predict_case("truncated TIFF", "cut.tiff", open(tif, "rb").read()[:300])
    predict_case("truncated PNG", "cut.png", open(ok_png, "rb").read()[:60])
    predict_case("truncated JPEG (libjpeg-style: decodes what is there)", "cut.jpg", open(ok_jpg, "rb").read()[:400])
    predict_case("text file named .tiff", "text.tiff", b"this is a text file\n")
    predict_case("32-bit float TIFF (ImageJ, MATLAB)", "float.tiff", make=lambda p: Image.fromarray(np.random.rand(32, 32).astype(np.float32)).save(p))
    predict_case("GIF given by name", "anim.gif", make=lambda p: Image.fromarray(np.zeros((32, 32), np.uint8)).save(p))
    predict_case("HEIC given by name (an iPhone's first bytes, named .jpg)", "IMG_0001.jpg", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64))
    predict_case("16-bit gray TIFF (must work)", "gray16.tiff", make=lambda p: Image.fromarray((np.arange(1024).reshape(32, 32) * 60).astype(np.uint16)).save(p))
    predict_case("palette TIFF (must work)", "palette.tiff", make=lambda p: Image.open(ok_png).convert("P").save(p))
    predict_case("gray + alpha TIFF, as PIL's LA writes it (works; alpha ignored)", "gray-alpha.tiff", make=lambda p: Image.open(ok_png).convert("LA").save(p))
    def white_is_zero_la(p):
        # The gray stored inverted, PhotometricInterpretation (tag 262) set to WhiteIsZero.
        g = np.asarray(Image.open(ok_png).convert("L"))
        Image.fromarray(np.stack([255 - g, np.full_like(g, 255)], -1), "LA").save(p)
        b = bytearray(open(p, "rb").read())
        assert b[:4] == b"II*\0"
        ifd = int.from_bytes(b[4:8], "little")
        for k in range(int.from_bytes(b[ifd:ifd + 2], "little")):
            e = ifd + 2 + 12 * k
            if int.from_bytes(b[e:e + 2], "little") == 262:
                b[e + 8:e + 10] = (0).to_bytes(2, "little")
        open(p, "wb").write(b)
    predict_case("gray + alpha TIFF stored white-is-zero (works; read inverted, the same answer)", "gray-alpha-wiz.tiff", make=white_is_zero_la)
    predict_case("RGBA PNG (works; alpha ignored)", "rgba.png", make=lambda p: Image.open(ok_png).convert("RGBA").save(p))
    predict_case("CMYK JPEG (works; converted to luma)", "cmyk.jpg", make=lambda p: Image.open(ok_png).convert("CMYK").save(p))
    predict_case("lossy WebP, as saved from the web (works)", "web.webp", make=lambda p: Image.open(ok_png).convert("RGB").save(p, quality=80))
    predict_case("truncated WebP", "cut.webp", make=lambda p: (Image.open(ok_png).convert("RGB").save(p, quality=80), open(p, "r+b").truncate(os.path.getsize(p) // 2)))
    predict_case("16383×16383 lossless WebP (10 KiB on disk)", "huge.webp", make=lambda p: Image.new("L", (16383, 16383), 40).save(p, lossless=True))
    predict_case("1×1 image", "one.png", make=lambda p: png(p, 1, 1))
    big_jpg = os.path.join(d, "big.jpg")
    Image.fromarray((np.indices((96, 128)).sum(0) % 256).astype(np.uint8)).convert("RGB").save(big_jpg, quality=90)
    prog_jpg = os.path.join(d, "prog.jpg")
    Image.open(big_jpg).save(prog_jpg, progressive=True, quality=90)
    for name, src in (("baseline", big_jpg), ("progressive", prog_jpg)):
        raw = open(src, "rb").read()
        for pct in (10, 50, 90, 99):
            predict_case(f"{name} JPEG cut at {pct} % (Pillow: image file is truncated)", f"cut{pct}-{name}.jpg", raw[: len(raw) * pct // 100])
    raw = bytearray(open(big_jpg, "rb").read())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", 16000, 16000)
    predict_case("JPEG of a few KB whose header claims 16000×16000", "claims.jpg", bytes(raw))
    predict_case("PGM image (works)", "gray.pgm", make=lambda p: Image.open(ok_png).save(p))
    code, out, err = vggft("predict", "/dev/zero", "--model", "runs/ok", cwd=d)
    record("/dev/zero as an image", code, said(err, want=("error", "/dev/zero")))
    code, out, err = vggft("predict", "https://example.com/face.jpg", "--model", "runs/ok", cwd=d)
    record("a web address as an image", code, said(err, want=("https://",)))
    huge = os.path.join(d, "huge16384.png")
    a = np.full((16384, 16384), 40, np.uint8)
    a[:8192, :8192] = 200
    Image.fromarray(a).save(huge, compress_level=1)
    del a
    if os.path.exists("/usr/bin/time"):
        p = subprocess.run(["/usr/bin/time", "-f", "peak_kib=%M", BIN, "predict", huge, "--model", "runs/ok"], cwd=d, capture_output=True, text=True)
        peak = [l for l in p.stderr.splitlines() if l.startswith("peak_kib=")][0].split("=")[1]
        record("16384×16384 gray PNG (works; peak memory of predict, small network)", p.returncode, f"peak RSS {int(peak) // 1024} MiB")
    predict_case("header claiming 100000×100000 pixels", "huge.tiff", tiff_header(100000, 100000))
    nonutf = os.path.join(img.encode(), b"caf\xe9.png")
    png(nonutf.decode("utf-8", "surrogateescape"))
    p = subprocess.run([BIN.encode(), b"predict", nonutf, b"--model", b"runs/ok"], cwd=d, capture_output=True)
    record("non-UTF-8 file name (works; shown lossily)", p.returncode, p.stdout.decode("utf-8", "replace").strip().replace(d + "/", ""))
    brk = os.path.join(img, "bad\nerror: fake.png")
    open(brk, "wb").write(b"not an image")
    code, out, err = vggft("predict", brk, "--model", "runs/ok", cwd=d)
    lines = [l for l in err.splitlines() if l.strip()]
    fake = any(l.startswith("error: fake") for l in lines)
    record("not an image, named with a line break (bad⏎error: fake.png)", code, ("a FAKE error line; " if fake else "the name escaped, no fake line: ") + (lines[0] if lines else "(nothing)"))
    os.symlink("loop.png", os.path.join(img, "loop.png"))
    code, out, err = vggft("predict", os.path.join(img, "loop.png"), "--model", "runs/ok", cwd=d)
    record("symlink loop", code, said(err, want=("error", os.path.join(img, "loop.png"))))
    if os.geteuid() == 0:
        rows.append(("unreadable file (permissions)", "not reproducible as root (root reads any file); tested as a normal user: `… cannot read: Permission denied`", "1"))
    else:
        u = os.path.join(img, "locked.png")
        png(u)
        os.chmod(u, 0)
        code, out, err = vggft("predict", u, "--model", "runs/ok", cwd=d)
        record("unreadable file (permissions)", code, said(err, want=("error", u)))

    def data_case(what, root, *extra):
        code, out, err = vggft("finetune", "--data", root, "--random-init", *SMALL, *extra, cwd=d)
        record(what, code, said(err) if code else "works; " + said(err, want=("warning", "note")))

    e = os.path.join(d, "empty")
    os.makedirs(e)
    data_case("empty folder", e)
    one = os.path.join(d, "one")
    os.makedirs(os.path.join(one, "neutral"))
    png(os.path.join(one, "neutral", "a.png"))
    png(os.path.join(one, "neutral", "b.png"), value=9)
    data_case("one class only", one)
    hs = os.path.join(d, "happysad")
    for c, v in (("happy", 60), ("sad", 180)):
        os.makedirs(os.path.join(hs, c))
        for i in range(3):
            png(os.path.join(hs, c, f"{i}.png"), value=v + i)
    data_case("folders happy/ and sad/ with the default binary task", hs)
    single = os.path.join(d, "single")
    folders(single)
    for f in os.listdir(os.path.join(single, "neutral"))[1:]:
        os.remove(os.path.join(single, "neutral", f))
    data_case("a class with a single image (the split needs two)", single)
    data_case("`--subject-pattern` that is not a regular expression", good, "--subject-pattern", "^([^_")
    data_case("`--subject-pattern` with two groups", good, "--subject-pattern", "^(.)(.)")
    data_case("a file name `--subject-pattern` does not match (`^(\\d+)_` on `00.png`)", good, "--subject-pattern", "^(\\d+)_")
    jaffe = os.path.join(d, "jaffe")
    os.makedirs(jaffe)
    for n in ["KA.NE1.26.tiff", "KA.HA1.29.tiff", "KL.NE1.155.tiff", "KL.XX1.158.tiff"]:
        Image.open(ok_png).save(os.path.join(jaffe, n))
    data_case("unknown JAFFE expression code", jaffe)
    wrap = os.path.join(d, "wrap")
    os.makedirs(os.path.join(wrap, "jaffe"))
    for n in ["KA.NE1.26.tiff", "KA.HA1.29.tiff", "KL.NE1.155.tiff", "KL.SU1.158.tiff"]:
        Image.open(ok_png).save(os.path.join(wrap, "jaffe", n))
    data_case("the folder above a JAFFE folder", wrap)
    flat = os.path.join(wrap, "jaffe")
    data_case("a flat JAFFE folder given `--layout folders`", flat, "--layout", "folders")
    data_case("a photo given as `--data` with `--layout jaffe`", os.path.join(flat, "KA.NE1.26.tiff"), "--layout", "jaffe")
    nest = os.path.join(d, "nest")
    folders(nest)
    os.makedirs(os.path.join(nest, "neutral", "KA"))
    for f in os.listdir(os.path.join(nest, "neutral")):
        if f.endswith(".png"):
            os.rename(os.path.join(nest, "neutral", f), os.path.join(nest, "neutral", "KA", f))
    data_case("a class folder sorted by person (neutral/KA/*.png)", nest)
    two = os.path.join(d, "two-levels")
    for who in ["KA", "KB"]:
        for cls in ["neutral", "happy"]:
            os.makedirs(os.path.join(two, who, cls))
            for k in range(2):
                png(os.path.join(two, who, cls, f"{k}.png"), value=40 + 60 * k + (20 if cls == "happy" else 0) + (5 if who == "KB" else 0))
    data_case("a folder per person of class folders (KA/neutral/*.png; works)", two)
    data_case("a folder per person of class folders given `--layout jaffe`", two, "--layout", "jaffe")
    data_case("a folder of class folders given `--layout csv` (no manifest.csv)", two, "--layout", "csv")
    per_person = os.path.join(d, "per-person")
    for who, names in (("KA", ["KA.NE1.26.tiff", "KA.HA1.29.tiff"]), ("kl-2", ["KL.NE1.155.tiff", "KL.SU1.158.tiff"])):
        os.makedirs(os.path.join(per_person, who))
        for k, n in enumerate(names):
            png(os.path.join(per_person, who, n), value=60 + 40 * k + len(who))
    data_case("JAFFE-named photos in a folder per person (KA/KA.NE1.26.tiff; works)", per_person)
    ck = os.path.join(d, "ck-people")
    for who in ("S005", "S010", "S011"):
        os.makedirs(os.path.join(ck, who))
        for k in range(3):
            png(os.path.join(ck, who, f"{who}_001_0000000{k + 1}.png"), value=50 + 30 * k + int(who[1:]))
    listed = sorted(os.path.join("per-person", "KA", n) for n in os.listdir(os.path.join(per_person, "KA")))
    code, _, err = vggft("finetune", *listed, "--random-init", *SMALL, cwd=d)
    record("a shell's list of photos where the dataset goes (`vggft finetune per-person/KA/*`)", code, said(err))
    data_case("a `*` no shell expanded (`--data 'per-person/KA/*.tiff'`)", os.path.join(per_person, "KA", "*.tiff"))
    data_case("CK+ frames sorted into a folder per person (S005/S005_001_00000001.png), `--task multiclass --val none`", ck, "--task", "multiclass", "--val", "none")
    loop = os.path.join(d, "loop")
    folders(loop)
    os.symlink(loop, os.path.join(loop, "happy", "up"))
    data_case("a link inside the data back to its folder (happy/up -> data)", loop)
    allbad = os.path.join(d, "allbad")
    for c in ("neutral", "happy"):
        os.makedirs(os.path.join(allbad, c))
        open(os.path.join(allbad, c, "0.png"), "wb").write(b"not a picture")
    data_case("`--skip-bad` where no image can be read", allbad, "--skip-bad")
    untold = os.path.join(d, "untold")
    for top in ["a", "b"]:
        for inner in ["KA", "KB"]:
            os.makedirs(os.path.join(untold, top, inner))
            png(os.path.join(untold, top, inner, "0.png"))
    data_case("two levels whose names do not tell which is the class (a/KA/*.png)", untold)
    pre = os.path.join(d, "presplit")
    folders(os.path.join(pre, "train"))
    folders(os.path.join(pre, "test"))
    data_case("a dataset shared split beforehand (train/ and test/ of the same class folders)", pre)
    dup = os.path.join(d, "dup")
    folders(dup)
    shutil.copy(os.path.join(dup, "neutral", "00.png"), os.path.join(dup, "happy", "99.png"))
    data_case("the same file under two classes (warns)", dup, "--val", "none")
    copies = os.path.join(d, "copies")
    folders(copies)
    shutil.copy(os.path.join(copies, "happy", "00.png"), os.path.join(copies, "happy", "00 (1).png"))
    data_case("a copy of a photo in its own class, no subject ids (warns: a split can put one copy on each side)", copies)
    data_case("a run folder given as --data (vggft's output, not photos)", os.path.join(d, "runs", "ok"))
    jcopy = os.path.join(d, "jaffecopy")
    os.makedirs(jcopy)
    for n in ["KA.NE1.26.tiff", "KA.HA1.29.tiff", "KL.NE1.155.tiff", "KL.SU1.158.tiff", "KA.HA1.29 copy.tiff"]:
        Image.open(ok_png).save(os.path.join(jcopy, n))
    data_case("a file manager's copy in a JAFFE folder (KA.HA1.29 copy.tiff)", jcopy)
    mixed = os.path.join(d, "mostlyjaffe")
    for c, names in (("neutral", ["KA.NE1.26.tiff", "KL.NE1.155.tiff"]), ("happy", ["KA.HA1.29.tiff", "KL.HA1.158.tiff", "portrait.png"])):
        os.makedirs(os.path.join(mixed, c))
        for n in names:
            Image.open(ok_png).save(os.path.join(mixed, c, n))
    data_case("class folders of JAFFE-named files but one (warns: the people are not read)", mixed, "--val", "none")
    kdef = os.path.join(d, "kdef")
    for who in ["AF01", "AM02"]:
        os.makedirs(os.path.join(kdef, who))
        for n in [f"{who}NES.JPG", f"{who}HAS.JPG", f"{who}HAHL.JPG"]:
            Image.open(ok_png).save(os.path.join(kdef, who, n), format="JPEG")
    Image.open(ok_png).save(os.path.join(kdef, "AF01", "IMG_0042.JPG"), format="JPEG")
    data_case("KDEF as distributed, with a stray photo in a person's folder", kdef)
    kdm = os.path.join(d, "kdef-moved")
    shutil.copytree(kdef, kdm)
    os.remove(os.path.join(kdm, "AF01", "IMG_0042.JPG"))
    shutil.move(os.path.join(kdm, "AM02", "AM02HAS.JPG"), os.path.join(kdm, "AF01", "AM02HAS.JPG"))
    data_case("KDEF with a photo moved into another person's folder (warns)", kdm)
    ck = os.path.join(d, "ckplus")
    os.makedirs(os.path.join(ck, "cohn-kanade-images", "S005", "001"))
    os.makedirs(os.path.join(ck, "Emotion", "S005", "001"))
    for f in range(1, 5):
        Image.open(ok_png).save(os.path.join(ck, "cohn-kanade-images", "S005", "001", f"S005_001_{f:08}.png"))
    with open(os.path.join(ck, "Emotion", "S005", "001", "S005_001_00000004_emotion.txt"), "w") as fh:
        fh.write("happy\n")
    data_case("CK+ as distributed, an emotion file that holds a word", ck)
    ckf = os.path.join(d, "ckplus-frames")
    shutil.copytree(os.path.join(ck, "cohn-kanade-images"), os.path.join(ckf, "cohn-kanade-images"))
    data_case("CK+'s frames without Emotion_labels.zip unpacked", ckf)
    ou = os.path.join(d, "oulu", "OriginalImg")
    for light in ["Dark", "Strong"]:
        for e in ["Anger", "Happiness"]:
            os.makedirs(os.path.join(ou, "VL", light, "P001", e))
            for f in range(5):
                Image.open(ok_png).save(os.path.join(ou, "VL", light, "P001", e, f"{f:03}.jpeg"), format="JPEG")
    data_case("Oulu-CASIA given whole (OriginalImg/, two lightings)", ou)
    jz = os.path.join(d, "jaffedbase.zip")
    shutil.make_archive(jz[:-4], "zip", os.path.join(d, "good"))
    data_case("the archive a face set comes in, given as --data (jaffedbase.zip)", jz)
    code, out, err = vggft("predict", jz, "--model", "runs/ok", cwd=d)
    record("the same archive given to predict", code, said(err, want=(jz,)))
    heic = os.path.join(d, "heic")
    folders(heic)
    shutil.copy(os.path.join(heic, "neutral", "00.png"), os.path.join(heic, "neutral", "phone.HEIC"))
    data_case("a HEIC picture (an iPhone's) in a class folder (left out, with a warning)", heic, "--val", "none")
    fifo = os.path.join(d, "fifo")
    folders(fifo)
    os.mkfifo(os.path.join(fifo, "neutral", "pipe.png"))
    data_case("a FIFO named as a photo in a class folder (left out, with a warning)", fifo, "--val", "none")
    csvd = os.path.join(d, "csv")
    folders(csvd)

    def csv_case(what, text, *extra):
        p = os.path.join(csvd, "m.csv")
        open(p, "w", encoding="utf-8").write(text)
        data_case(what, p, *extra)

    rel = [f"{c}/{i:02}.png" for c in ("neutral", "happy") for i in range(4)]
    csv_case("CSV with a BOM and quoted fields (works)", "\ufeff\"path\",\"label\"\n" + "".join(f'"{r}","{r.split("/")[0]}"\n' for r in rel), "--val", "none")
    csv_case("CSV missing the label column", "path,subject\n" + "".join(f"{r},s\n" for r in rel))
    csv_case("CSV row with an unquoted comma in its path", "path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "a, b.png,neutral\n")
    csv_case("CSV with Windows paths (neutral\\00.png)", "path,label\n" + "".join(f"{r.replace('/', chr(92))},{r.split('/')[0]}\n" for r in rel))
    open(os.path.join(csvd, "m.csv"), "wb").write(("path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "José.png,neutral\n").encode("cp1252"))
    data_case("CSV saved by Excel in Windows-1252 (José.png)", os.path.join(csvd, "m.csv"))
    # Windows PowerShell 5's `>`: UTF-16 little-endian with its byte-order mark ("utf-16" writes one).
    open(os.path.join(csvd, "m.csv"), "wb").write(("path,label\r\n" + "".join(f"{r},{r.split('/')[0]}\r\n" for r in rel)).encode("utf-16"))
    data_case("CSV saved as UTF-16 by Windows PowerShell's > (works)", os.path.join(csvd, "m.csv"), "--val", "none")
    csv_case("CSV naming a missing file", "path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "gone.png,neutral\n")
    shutil.copy(ok_png, os.path.join(d, "outside.png"))
    csv_case("CSV path outside its folder (allowed, reported)", "path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "../outside.png,neutral\n", "--val", "none")
    open(os.path.join(csvd, "m.csv"), "w").write("path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel))
    code, out, err = vggft("finetune", "--data", "m.csv", "--random-init", *SMALL, "--val", "none", "--out", d + "/runs", cwd=csvd)
    record("manifest given as a bare file name from its own folder (works)", code, "works (trains)" if code == 0 else said(err))
    os.mkfifo(os.path.join(csvd, "pipe.png"))
    csv_case("CSV naming a FIFO", "path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "pipe.png,neutral\n")
    csv_case("CSV naming /dev/zero", "path,label\n" + "".join(f"{r},{r.split('/')[0]}\n" for r in rel) + "/dev/zero,neutral\n")
    csv_case("CSV labels differing only in case (Neutral / neutral)", "path,label\n" + "".join(f"{r},{'Neutral' if i == 0 else r.split('/')[0]}\n" for i, r in enumerate(rel)))
    csv_case("CSV saved with Windows line ends naming a missing file (line 10 named)", "path,label\r\n" + "".join(f"{r},{r.split('/')[0]}\r\n" for r in rel) + "gone.png,neutral\r\n")
    tabbed = '"neu\ttral"'
    csv_case("CSV label holding a tab (quoted)", "path,label\n" + "".join(f"{r},{tabbed if i == 0 else r.split('/')[0]}\n" for i, r in enumerate(rel)))
    csv_case("CSV of a header and no rows", "path,label,subject\n")
    csv_case("CSV whose subject column is partly empty", "path,label,subject\n" + "".join(f"{r},{r.split('/')[0]},{'' if i == 2 else 'P%d' % (i % 4)}\n" for i, r in enumerate(rel)))

    # Weights and runs.
    wd = os.path.join(d, "w")
    os.makedirs(wd)

    def weights_case(what, path, *extra):
        code, out, err = vggft("finetune", "--data", good, "--weights", path, *extra, "--image-size", "32", "--device", "cpu", "--stages", "head:1", "--quiet", cwd=d)
        record(what, code, said(err))

    if os.path.exists(W):
        raw = open(W, "rb").read()
        open(os.path.join(wd, "cut.safetensors"), "wb").write(raw[: len(raw) // 2])
        weights_case("truncated safetensors", os.path.join(wd, "cut.safetensors"))
        t = load_file(W)
        bad = dict(t)
        bad["features.0.weight"] = bad["features.0.weight"].clone()
        bad["features.0.weight"][0, 0, 0, 0] = float("nan")
        save_file(bad, os.path.join(wd, "nan.safetensors"))
        weights_case("NaN in a weight", os.path.join(wd, "nan.safetensors"))
        shape = dict(t)
        shape["features.28.weight"] = torch.zeros(512, 512, 1, 1)
        save_file(shape, os.path.join(wd, "shape.safetensors"))
        weights_case("wrong shape", os.path.join(wd, "shape.safetensors"))
        weights_case("--bn recalibrate with plain VGG16 weights", W, "--bn", "recalibrate")
    save_file({"encoder.conv.weight": torch.zeros(3, 3)}, os.path.join(wd, "keys.safetensors"))
    weights_case("wrong keys", os.path.join(wd, "keys.safetensors"))
    weights_case("/dev/zero as the weights file", "/dev/zero")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, os.path.join(wd, "vgg16-397923af.pth"))
    weights_case("torchvision's own download (a torch.save .pth) as the weights", os.path.join(wd, "vgg16-397923af.pth"))
    code, out, err = vggft("preprocess", ok_png, "--model", "runs/ok", "--out", ok_png, cwd=d)
    record("`preprocess --out` naming the photo it reads", code, said(err))
    code, out, err = vggft("preprocess", img, "--model", "runs/ok", "--out", "x.safetensors", cwd=d)
    record("`preprocess` given a folder of photos (it writes one image's input)", code, said(err))
    photos = os.path.join(d, "photos")
    os.makedirs(photos)
    shutil.copy(ok_png, photos)
    code, out, err = vggft("explain", photos, "--model", "runs/ok", "--out", photos, cwd=d)
    record("`explain --out` the folder of the photos it explains", code, said(err))
    r = os.path.join(d, "runs", "ok")
    cfg = open(os.path.join(r, "config.json")).read()
    open(os.path.join(r, "config.json"), "w").write(cfg[:40])
    code, out, err = vggft("predict", ok_png, "--model", "runs/ok", cwd=d)
    record("run folder with an edited (broken) config.json", code, said(err))
    c = json.loads(cfg)
    c["classes"] = ["a", "b", "c"]
    open(os.path.join(r, "config.json"), "w").write(json.dumps(c))
    code, out, err = vggft("predict", ok_png, "--model", "runs/ok", cwd=d)
    record("model from a different class count than its config", code, said(err))
    os.remove(os.path.join(r, "config.json"))
    code, out, err = vggft("predict", ok_png, "--model", "runs/ok", cwd=d)
    record("run folder without config.json", code, said(err))
    code, out, err = vggft("predict", ok_png, "--model", "runs/none", cwd=d)
    record("missing model (run folder)", code, said(err))
    open(os.path.join(d, "blocked"), "w").write("x")
    code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL, "--out", "blocked", cwd=d)
    record("output folder that cannot be created (a file is in the way)", code, said(err))
    code, out, err = vggft("faces", good, "--out", os.path.join(good, "faces"), cwd=d)
    record("`faces --out` inside the class folders it reads", code, said(err))
    cut = os.path.join(d, "cutset")
    folders(cut)
    open(os.path.join(cut, "neutral", "zz_cut.png"), "wb").write(open(ok_png, "rb").read()[:60])
    code, out, err = vggft("faces", cut, "--out", os.path.join(d, "cutfaces"), cwd=d)
    left = "nothing written" if not os.path.exists(os.path.join(d, "cutfaces")) else "SOMETHING WRITTEN"
    record(f"`faces` over a dataset with a truncated image ({left}; `--skip-bad` crops the rest)", code, said(err))
    code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL, "--out", os.path.join(good, "runs"), cwd=d)
    record("`finetune --out` inside the class folders it reads (cv and lr-find alike)", code, said(err))
    open(os.path.join(r, "config.json"), "w").write(cfg)  # a whole run again, for the cases below
    ro = os.path.join(d, "ro")
    os.makedirs(ro)
    os.chmod(ro, 0o555)
    # Root writes anywhere: as root these run as `nobody` (setpriv), where permission bits count.
    user = [] if os.geteuid() != 0 else ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    os.chmod(d, 0o755)

    def unwritable(*args):
        p = subprocess.run([*user, BIN, *args], cwd=ro, capture_output=True, text=True, errors="replace")
        return p.returncode, p.stderr

    code, err = unwritable("finetune", "--data", good, "--random-init", *SMALL, "--out", os.path.join(ro, "runs"))
    if err.startswith("setpriv:"):
        rows.append(("read-only output folder", "not tried: running as root and setpriv cannot drop privileges here", "–"))
    else:
        record("read-only output folder (`--out` given)", code, said(err))
        code, err = unwritable("finetune", "--data", good, "--random-init", *SMALL)
        record("a working folder this user cannot write (finetune's default `--out runs`; cv and lr-find alike)", code, said(err))
        code, err = unwritable("evaluate", "--model", os.path.join(d, "runs", "ok"), "--data", good)
        record("evaluate a model whose folder is read-only (the default `--out` is inside it; before any photo is scored)", code, said(err))
        unf = os.path.join(d, "runs", "unfinished")
        os.makedirs(unf)
        for n in ("config.json", "split.csv"):
            shutil.copy(os.path.join(r, n), unf)
        code, err = unwritable("finetune", "--resume", unf)
        record("`--resume` of another user's unfinished run (readable, not writable; a cv or explain into their folder alike)", code, said(err))
        locked = os.path.join(d, "locked")
        shutil.copytree(r, os.path.join(locked, "ok"))
        os.chmod(locked, 0o700)
        code, err = unwritable("predict", ok_png, "--model", os.path.join(locked, "ok"))
        record("a run inside a folder this user cannot enter (evaluate, explain, report, `--resume`, `cv --collect`, `--weights` alike)", code, said(err))
    disk = os.path.join(d, "disk")
    os.makedirs(disk)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", disk], capture_output=True).returncode == 0:
        try:
            code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL, "--out", disk, "--quiet", cwd=d)
            left = [f for r_, _, fs in os.walk(disk) for f in fs if ".tmp" in f or f == "COMPLETE"]
            record(f"full disk (48 KiB tmpfs; temp or COMPLETE files left: {len(left)})", code, said(err))
        finally:
            subprocess.run(["umount", disk])
        # Full before training starts: room for the lock and config.json, not split.csv.
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", disk], capture_output=True).returncode == 0:
            try:
                code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL, "--out", os.path.join(disk, "runs"), "--quiet", cwd=d)
                left = sum(len(ds) + len(fs) for _, ds, fs in os.walk(disk))
                record(f"a disk full before training starts (8 KiB tmpfs; files or folders left: {left})", code, said(err))
            finally:
                subprocess.run(["umount", disk])
        # An evaluation, then crops, the disk fills part-way: the earlier set in the folder stays whole.
        ev = ("evaluate", "--model", os.path.join(d, "runs", "ok"), "--data", good, "--device", "cpu")
        for size, folder, first, second, what in (
            ("160k", "ev", ev, (*ev, "--top-losses", "8"), "an evaluation with --top-losses filling the disk (160 KiB tmpfs; the earlier evaluation in its folder kept whole"),
            ("128k", "fc", ("faces", good, "--tile", "32"), ("faces", good, "--tile", "512"), "`faces` filling the disk with larger crops (128 KiB tmpfs; the earlier crops, manifest and sheet kept whole"),
        ):
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", disk], capture_output=True).returncode == 0:
                try:
                    out_dir = os.path.join(disk, folder)
                    vggft(*first, "--out", out_dir, cwd=d)
                    before = files_under(out_dir)
                    code, out, err = vggft(*second, "--out", out_dir, cwd=d)
                    record(f"{what}: {bool(before) and files_under(out_dir) == before})", code, said(err))
                finally:
                    subprocess.run(["umount", disk])
    else:
        rows.append(("full disk", "not tried: mounting a small tmpfs needs root; the test of the same name skips likewise", "–"))
    run_cases(d, good)
    big = "18446744073709551615"  # u64::MAX: these panicked allocating, wrapped, or ran as asked
    for opt in (["--freeze-until", "conv9"], ["--epochs", "0"], ["--epochs", big], ["--hidden", "100000000"], ["--crop", "8,8,1000,1000"], ["--crop", "10,10,1,1"], ["--lr", "-1"], ["--batch-size", "1"], ["--threads", "0"], ["--threads", "-1"], ["--dropout", "-0.5"], ["--batch-size", "-4"]):
        code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL[:6], *opt, cwd=d)
        record(" ".join(opt), code, said(err, want=("error",)))
    code, out, err = vggft("cv", "--data", good, "--random-init", *SMALL[:6], "--seeds", "0,1,0", "--out", "cv-twice", cwd=d)
    record("cv --seeds 0,1,0 (a seed twice)", code, said(err, want=("error",)))
    for opt in (["--folds", big], ["--repeats", big]):
        code, out, err = vggft("cv", "--data", good, "--random-init", *SMALL[:6], *opt, "--out", "cv-big", cwd=d)
        record("cv " + " ".join(opt), code, said(err, want=("error",)))
    pair = os.path.join(d, "pair.csv")
    with open(pair, "w") as f:
        f.write(f"path,label,subject\n{good}/neutral/00.png,neutral,A\n{good}/happy/00.png,happy,B\n")
    code, out, err = vggft("cv", "--data", pair, "--random-init", *SMALL[:6], "--folds", "loso", "--out", "cv-pair", cwd=d)
    record("cv --folds loso of two people with one photo each", code, said(err, want=("error",)))
    code, out, err = vggft("lr-find", "--data", good, "--random-init", *SMALL[:6], "--steps", big, "--out", "lr-big", cwd=d)
    record("lr-find --steps " + big, code, said(err, want=("error",)))
    # Feature blocks and stages that do not fit together (both once panicked inside libtorch).
    for opt in (["--features", "conv4"], ["--features", "conv3,conv5", "--stages", "head:1,conv5:1"]):
        code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL[:6], *opt, cwd=d)
        record(" ".join(opt) + (" (the default fine-tune head:3 → conv5:12)" if len(opt) == 2 else ""), code, said(err, want=("error",)))
    code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL, "--features", "conv4", "--val", "none", "--name", "c4", "--quiet", cwd=d)
    record("--features conv4 --stages head:1 (works)", code, "works (trains)" if code == 0 else said(err))
    code, out, err = vggft("explain", os.path.join(good, "neutral", "00.png"), "--model", "runs/c4", "--layer", "conv5", "--out", "cam", cwd=d)
    record("explain --layer conv5 of that run", code, said(err, want=("error",)))
    for opt in (["--zoom", "1"], ["--val", "subjects:0.5", "--val-subjects", "P01"]):
        code, out, err = vggft("finetune", "--data", good, "--random-init", *SMALL[:6], *opt, cwd=d)
        record(" ".join(opt), code, said(err, want=("error",)))


def run_cases(d, good):
    """Resume, config.json edits, concurrent writers, closed pipes, divergence."""
    data = os.path.join(d, "rdata")
    folders(data)
    code, out, err = vggft("finetune", "--data", data, "--random-init", *SMALL, "--val", "none", "--name", "r", "--quiet", cwd=d)
    assert code == 0, err
    r = os.path.join(d, "runs", "r")
    os.remove(os.path.join(r, "COMPLETE"))
    code, out, err = vggft("finetune", "--resume", "runs/r", "--lr", "5", "--out", "x", cwd=d)
    record("--resume with other options (--lr 5 --out x)", code, said(err))
    code, out, err = vggft("finetune", "--rerun", "runs/r", "--lr", "5", cwd=d)
    record("--rerun with an option it would ignore (--lr 5)", code, said(err))
    code, out, err = vggft("finetune", "--resume", "runs/typo", cwd=d)
    record("--resume of a run folder that is not there", code, said(err))
    code, out, err = vggft("finetune", "--data", "data/jaffe", "--random-init", *SMALL, cwd=d)
    record("--data of a folder that is not there", code, said(err))
    victim = os.path.join(data, "happy", "01.png")
    keep = open(victim, "rb").read()
    os.remove(victim)
    code, out, err = vggft("finetune", "--resume", "runs/r", cwd=d)
    record("--resume after an image was deleted", code, said(err))
    open(victim, "wb").write(keep + b"x")
    code, out, err = vggft("finetune", "--resume", "runs/r", cwd=d)
    record("--resume after an image changed", code, said(err))
    open(victim, "wb").write(keep)
    busy = subprocess.Popen([BIN, "finetune", "--data", data, "--random-init", *SMALL[:-2], "--stages", "head:10000", "--val", "none", "--name", "busy", "--quiet"], cwd=d, stderr=subprocess.DEVNULL)
    import time
    t0 = time.time()
    while not os.path.exists(os.path.join(d, "runs", "busy", "checkpoint.json")) and time.time() - t0 < 60:
        time.sleep(0.05)
    code, out, err = vggft("finetune", "--resume", "runs/busy", cwd=d)
    busy.kill()
    busy.wait()
    record("--resume while another process still writes the run", code, said(err).replace(str(busy.pid), "PID"))
    code, out, err = vggft("finetune", "--resume", "runs/r", "--quiet", cwd=d)
    record("--resume of the same data from another folder's run (works)", code, "works: " + out.strip().splitlines()[0] if code == 0 else said(err))
    moved = os.path.join(d, "mdata")
    folders(moved)
    code, out, err = vggft("finetune", "--data", moved, "--random-init", *SMALL, "--name", "m", "--quiet", cwd=d)
    assert code == 0, err
    os.rename(moved, moved + "-elsewhere")
    code, out, err = vggft("predict", "--held-out", "--model", "runs/m", cwd=d)
    record("`predict --held-out` after the run's data moved", code, said(err))
    cfg = json.load(open(os.path.join(r, "config.json")))
    img = os.path.join(data, "neutral", "00.png")
    for what, path, value in (
        ("batch_size 0", ("train", "batch_size"), 0),
        ("threads -1", ("threads",), -1),
        ("image_size 100000", ("data", "preprocess", "image_size"), 100000),
        ("image_size 16", ("data", "preprocess", "image_size"), 16),
        ("dropout 1.5", ("model", "dropout"), 1.5),
        ("std 0", ("data", "preprocess", "std"), [0.0, 0.224, 0.225]),
    ):
        c = json.loads(json.dumps(cfg))
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        json.dump(c, open(os.path.join(r, "config.json"), "w"))
        code, out, err = vggft("predict", img, "--model", "runs/r", cwd=d)
        record(f"config.json edited: {what}", code, said(err))
    json.dump(cfg, open(os.path.join(r, "config.json"), "w"))
    model = os.path.join(r, "model.safetensors")
    own = open(model, "rb").read()
    t = load_file(model)
    t2 = dict(t)
    t2["head.fc.bias"] = t2["head.fc.bias"].to(torch.int64)
    save_file(t2, model)
    code, out, err = vggft("predict", img, "--model", "runs/r", cwd=d)
    record("integer tensor in model.safetensors", code, said(err))
    t2["head.fc.bias"] = t["head.fc.bias"] + 1
    save_file(t2, model)
    code, out, err = vggft("predict", img, "--model", "runs/r", cwd=d)
    record("a model.safetensors that is not the run's own (another run's copied over it, or edited)", code, said(err))
    open(model, "wb").write(own)
    # A photo the run was not trained on, nor a copy of one: its training photos get a note on stderr.
    fresh = os.path.join(d, "fresh.png")
    png(fresh, value=77)
    p = subprocess.Popen([BIN, "predict", fresh, "--model", "runs/r"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    record("predict … | (reader gone)", p.wait(), "exits quietly" if not err.strip() else said(err))
    p = subprocess.Popen([BIN, "finetune", "--data", data, "--random-init", *SMALL, "--val", "none", "--name", "closed"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.stderr.close()
    code = p.wait()
    record("finetune … 2>&1 | head -0 (stderr gone)", code, "trains to the end; COMPLETE written: " + str(os.path.exists(os.path.join(d, "runs", "closed", "COMPLETE"))))
    os.makedirs(os.path.join(d, "lat", "runs", "latest"))
    code, out, err = vggft("finetune", "--data", data, "--random-init", *SMALL, "--val", "none", cwd=os.path.join(d, "lat"))
    record("a real folder at runs/latest (warns, run completes)", code, said(err, want=("warning",)))
    kids = [subprocess.Popen([BIN, "finetune", "--data", data, "--random-init", *SMALL, "--val", "none", "--name", "same"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    dirs = sorted(l for k in kids for l in k.communicate()[0].splitlines() if l.startswith("run: "))
    record("two runs with one --name started together", max(k.returncode for k in kids), "; ".join(x.replace(d + "/", "") for x in dirs))
    sep = os.path.join(d, "sep")
    for c, side in (("neutral", 0), ("happy", 1)):
        os.makedirs(os.path.join(sep, c))
        for i in range(6):
            a = np.full((32, 32), 30 + 3 * i, np.uint8)
            a[:, 16 * side : 16 * side + 16] = 220 - 3 * i
            Image.fromarray(a).save(os.path.join(sep, c, f"{i:02}.png"))
    code, out, err = vggft("finetune", "--data", sep, "--random-init", *SMALL[:-2], "--stages", "head:2,conv5:4", "--lr", "5", "--val", "none", cwd=d)
    record("--lr 5 (the loss climbs without becoming NaN)", code, said(err, want=("error",)))


if __name__ == "__main__":
    main()
