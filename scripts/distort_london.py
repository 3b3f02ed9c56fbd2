"""Makes the London faces identity-dominated, as JAFFE is: each person's two
photos get the same person-specific distortion — gamma, contrast, brightness
and a fixed overlay pattern — so that who the person is moves the features
more than whether they smile. Used to measure per-subject normalisation
(docs/results/accuracy/).

    .venv/bin/python scripts/distort_london.py ../shared/data/london-faces OUT

Writes OUT/<label>/<name>.png (8-bit gray, 256 px) and OUT/manifest.csv
(path,label,subject); deterministic (seeded by the subject id).
"""

import csv
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def distortion(subject: str, size: int):
    rng = np.random.default_rng(zlib.crc32(subject.encode()))
    gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    contrast = rng.uniform(0.5, 1.4)
    offset = rng.uniform(-40, 40)
    # A smooth person-specific overlay: a few bright / dark blobs and a stripe pattern.
    y, x = np.mgrid[0:size, 0:size] / size
    overlay = np.zeros((size, size))
    for _ in range(4):
        cx, cy, r, a = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.25), rng.uniform(-90, 90)
        overlay += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 12)
    overlay += 25 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
    return gamma, contrast, offset, overlay


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    size = 256
    cache = {}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "subject"])
        for r in rows:
            s = r["subject"]
            if s not in cache:
                cache[s] = distortion(s, size)
            gamma, contrast, offset, overlay = cache[s]
            g = np.asarray(Image.open(src / r["path"]).convert("L").resize((size, size), Image.BILINEAR), dtype=np.float64) / 255.0
            g = 255.0 * g**gamma
            g = (g - 128.0) * contrast + 128.0 + offset + overlay
            img = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
            rel = Path(r["label"]) / (Path(r["path"]).stem + ".png")
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            img.save(out / rel)
            w.writerow([rel.as_posix(), r["label"], s])


if __name__ == "__main__":
    main()
