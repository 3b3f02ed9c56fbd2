"""A synthetic set in JAFFE's format from the London faces, for measuring
recipes where JAFFE itself is not available: 10 people × 7 expressions ×
3 samples = 210 photos, 256×256 8-bit gray uncompressed TIFFs named as JAFFE
names them (`KA.AN1.39.tiff`: subject, expression code + sample, serial).

Each person is one London face (the first 10 subjects of the manifest):
- NE is their neutral photo, HA their smiling photo (real expressions);
- AN, DI, FE, SA, SU are made from the neutral photo by local warps of the
  brows, eyes and mouth (the London photos are aligned: eyes near y = 115,
  mouth near y = 160): surprise opens the mouth and raises the brows, sadness
  turns the mouth corners down and lifts the inner brows, anger lowers and
  draws in the brows and presses the lips, disgust raises the upper lip and
  narrows the eyes, fear raises the brows, widens the eyes and stretches the
  mouth sideways;
- the picture is then cut to the face's square (about 150 px of the 256 px
  London photo) and scaled back to 256 px, so the face fills it as in JAFFE;
- the three samples differ by expression strength (0.7–1.0), a small shift
  and rotation and brightness;
- every photo of a person gets that person's own gamma, contrast, brightness
  and overlay (scripts/distort_london.py), so identity dominates the
  features as it does in JAFFE (10 people photographed alike).

The synthetic expressions are crude: figures on this set say how recipes
compare on JAFFE's structure (10 people, 21 photos each, 7 raw labels, 30
neutral of 210), not what JAFFE itself scores.

    .venv/bin/python scripts/jaffe_like.py ../shared/data/london-faces OUT [SIDE [OVERLAY [FIRST]]]

SIDE (default 150) is the side of the square, in London pixels, that is
scaled to 256 px: 150 lets the face fill the picture; 200 keeps hair, ears
and neck around it, 256 keeps the London photo's whole frame (a face about
a third of the width) — for measuring face localisation (`--face auto`).
OVERLAY (default 1) scales the person-specific overlay: at 1 its stripes
hide most faces from the detector, at 0.5 it finds every face. FIRST
(default 0) skips that many subjects of the manifest: 10 takes the 11th to
20th, a set of other people for checking a choice made on the first ten.

Deterministic (seeded). Attribution: the London faces (DeBruine & Jones,
2017, CC BY 4.0).
"""

import csv
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from distort_london import distortion  # noqa: E402

SIZE = 256
CODES = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]
# (centre x, centre y, radius x, radius y) of the regions the warps move.
MOUTH = (128, 160, 26, 14)
BROW_L, BROW_R = (105, 100, 16, 8), (151, 100, 16, 8)
EYE_L, EYE_R = (105, 115, 14, 7), (151, 115, 14, 7)
# The face's square in the London photos (x, y, side), scaled up to 256 px.
CROP = (53, 55, 150)


def bump(region, scale=1.6):
    """A smooth window over a region (1 at its centre)."""
    cx, cy, rx, ry = region
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    return np.exp(-(((x - cx) / (rx * scale)) ** 2 + ((y - cy) / (ry * scale)) ** 2)), x - cx, y - cy


def field(code: str, k: float):
    """Backward displacement (dx, dy) in pixels: output(x, y) = input(x + dx, y + dy)."""
    dx, dy = np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE))

    def move(region, fx=0.0, fy=0.0, sx=1.0, sy=1.0):
        # Shift by (fx, fy) and scale about the centre by (sx, sy), fading out of the region.
        w, rx, ry = bump(region)
        dx[:] += w * (-fx + rx * (1 / sx - 1))
        dy[:] += w * (-fy + ry * (1 / sy - 1))

    if code == "SU":
        move(MOUTH, sy=1 + 0.9 * k, sx=1 - 0.15 * k)
        for b in (BROW_L, BROW_R):
            move(b, fy=-6 * k)
        for e in (EYE_L, EYE_R):
            move(e, sy=1 + 0.35 * k)
    elif code == "SA":
        cx, cy, rx, ry = MOUTH
        for side in (-1, 1):
            move((cx + side * 20, cy + 2, 10, 8), fy=5 * k)
        move(BROW_L, fy=-3 * k, fx=2 * k)
        move(BROW_R, fy=-3 * k, fx=-2 * k)
    elif code == "AN":
        move(BROW_L, fy=5 * k, fx=4 * k)
        move(BROW_R, fy=5 * k, fx=-4 * k)
        move(MOUTH, sy=1 - 0.45 * k)
        for e in (EYE_L, EYE_R):
            move(e, sy=1 - 0.25 * k)
    elif code == "DI":
        cx, cy, rx, ry = MOUTH
        move((cx, cy - 8, 22, 8), fy=-5 * k)
        for e in (EYE_L, EYE_R):
            move(e, sy=1 - 0.45 * k)
        move((cx, 138, 10, 8), sy=1 - 0.3 * k)
    elif code == "FE":
        for b in (BROW_L, BROW_R):
            move(b, fy=-5 * k)
        for e in (EYE_L, EYE_R):
            move(e, sy=1 + 0.45 * k)
        move(MOUTH, sx=1 + 0.3 * k, sy=1 + 0.3 * k)
    return dx, dy


def warp(gray: np.ndarray, dx, dy, shift, angle) -> np.ndarray:
    """Samples gray at the displaced points, then a small shift and rotation."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    xr, yr = x - SIZE / 2, y - SIZE / 2
    x2 = c * xr - s * yr + SIZE / 2 + shift[0] + dx
    y2 = s * xr + c * yr + SIZE / 2 + shift[1] + dy
    grid = torch.tensor(np.stack([x2 / (SIZE - 1) * 2 - 1, y2 / (SIZE - 1) * 2 - 1], -1), dtype=torch.float32)[None]
    img = torch.tensor(gray, dtype=torch.float32)[None, None]
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0].numpy()


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    side = int(sys.argv[3]) if len(sys.argv) > 3 else CROP[2]
    strength = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    first = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    # The same centre as CROP, clamped to the London frame.
    cx, cy = CROP[0] + CROP[2] // 2, CROP[1] + CROP[2] // 2
    x0, y0 = (min(max(c - side // 2, 0), SIZE - side) for c in (cx, cy))
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    subjects = []
    for r in rows:
        if r["subject"] not in subjects:
            subjects.append(r["subject"])
    out.mkdir(parents=True, exist_ok=True)
    serial = 0
    listing = []
    people = subjects[first : first + 10]
    for n, subj in enumerate(people):
        name = "ABCDEFGHIJ"[n] + "K"
        photos = {r["label"]: np.asarray(Image.open(src / r["path"]).convert("L"), dtype=np.float64) for r in rows if r["subject"] == subj}
        gamma, contrast, offset, overlay = distortion(subj, SIZE)
        overlay = overlay * strength
        rng = np.random.default_rng(zlib.crc32(subj.encode()))
        for code in CODES:
            for sample in (1, 2, 3):
                k = rng.uniform(0.7, 1.0)
                base = photos["smiling"] if code == "HA" else photos["neutral"]
                dx, dy = field(code, k) if code not in ("HA", "NE") else (0.0, 0.0)
                g = warp(base, dx, dy, rng.uniform(-3, 3, 2), np.deg2rad(rng.uniform(-3, 3)))
                # Framed as JAFFE is (by default the face fills the picture).
                g = np.asarray(Image.fromarray(g[y0 : y0 + side, x0 : x0 + side].astype(np.float32), "F").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float64)
                g = g * rng.uniform(0.92, 1.08)
                g = 255 * (np.clip(g, 0, 255) / 255) ** gamma
                g = np.clip((g - 128) * contrast + 128 + offset + overlay, 0, 255)
                serial += 1
                fname = f"{name}.{code}{sample}.{serial}.tiff"
                Image.fromarray(g.round().astype(np.uint8), "L").save(out / fname)
                listing.append(fname)
    print(f"{len(listing)} images of {len(people)} people in {out}")


if __name__ == "__main__":
    main()
