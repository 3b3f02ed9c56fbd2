"""Greys out everything but the face: each photo keeps the union of its
person's face boxes (as `vggft faces` found them, widened by 5 % of the
box) and is mid-grey elsewhere, the same window for all of a person's
photos, so the window itself says nothing about the expression. Used to
measure how much of the single-image head's figure on the whole frame comes
from outside the face (docs/results/accuracy, "The single-image head").

    target/release/vggft faces DATA --out FACES
    .venv/bin/python scripts/mask_background.py DATA FACES/faces.csv OUT

DATA holds manifest.csv (path,label,subject, paths relative to DATA).
Writes OUT/<label>_<name>.png (8-bit gray) and OUT/manifest.csv
(path,label,subject).
"""

import csv
import os
import sys
from pathlib import Path

from PIL import Image


def main(data: Path, faces_csv: Path, out: Path) -> None:
    boxes = {}
    with open(faces_csv) as f:
        for r in csv.DictReader(f):
            boxes[os.path.normpath(os.path.relpath(r["path"], data))] = tuple(int(r[k]) for k in "xywh")
    with open(data / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    per_person: dict[str, list[tuple[int, int, int, int]]] = {}
    for r in rows:
        x, y, w, h = boxes[os.path.normpath(r["path"])]
        per_person.setdefault(r["subject"], []).append((x, y, x + w, y + h))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w") as f:
        f.write("path,label,subject\n")
        for r in rows:
            bs = per_person[r["subject"]]
            x0, y0 = min(b[0] for b in bs), min(b[1] for b in bs)
            x1, y1 = max(b[2] for b in bs), max(b[3] for b in bs)
            m = 0.05 * (x1 - x0)
            im = Image.open(data / r["path"]).convert("L")
            win = (max(0, int(x0 - m)), max(0, int(y0 - m)), min(im.width, int(x1 + m)), min(im.height, int(y1 + m)))
            masked = Image.new("L", im.size, 128)
            masked.paste(im.crop(win), win[:2])
            name = r["path"].replace("/", "_").rsplit(".", 1)[0] + ".png"
            masked.save(out / name)
            f.write(f"{name},{r['label']},{r['subject']}\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
