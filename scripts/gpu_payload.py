"""Build the payload of scripts/gpu_run.sh in gpu/ (keep gpu/ out of git: .git/info/exclude).

A lent GPU machine has neither ../shared/data nor our fonts, word list and textures, and a call carries at most
64 MiB with the repository (counted per file, so thousands of small crops go as one file). So: gpu/data.zip, the
real training crops (IIIT5K/train, IC15/train, SVT/train) re-encoded as JPEG q93 under their original file
names (the held-out split hashes the names; the loader reads images by content),
and gpu/sys.tar.xz with a seeded sample of the default-weighted font collections (16 aenigma faces, up to 8 of
every other collection, files under 1.5 MB; the display faces of the `irregular` preset and the CJK wqy left
out), the word list behind /usr/share/dict/words and the mypaint background textures, to unpack at /.
    python scripts/gpu_payload.py [--data ../shared/data]
"""
import argparse
import glob
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile

from PIL import Image

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from masterocr.data.synth.config import IRREGULAR_FONT_GROUPS  # noqa: E402

FONT_ROOTS = ("/usr/share/fonts", "/usr/share/texmf/fonts/opentype")


def copy_split(src: str, dst: str) -> None:
    os.makedirs(os.path.join(dst, "images"), exist_ok=True)
    shutil.copy(os.path.join(src, "labels.tsv"), os.path.join(dst, "labels.tsv"))
    for name in sorted(os.listdir(os.path.join(src, "images"))):
        source, target = os.path.join(src, "images", name), os.path.join(dst, "images", name)
        if name.lower().endswith((".jpg", ".jpeg")):
            shutil.copy(source, target)
        else:
            Image.open(source).convert("RGB").save(target, "JPEG", quality=93)


def font_sample() -> list[str]:
    skip = set(IRREGULAR_FONT_GROUPS) | {"wqy"}
    groups: dict[str, list[str]] = {}
    for base in FONT_ROOTS:
        for path in glob.glob(base + "/**/*", recursive=True):
            if not path.lower().endswith((".ttf", ".otf", ".ttc")) or os.path.getsize(path) > 1_500_000:
                continue
            parts = os.path.relpath(path, base).split("/")
            group = parts[1] if parts[0] in ("truetype", "opentype", "type1") and len(parts) > 2 else parts[0]
            if group not in skip:
                groups.setdefault(group, []).append(path)
    chosen = []
    for group, paths in sorted(groups.items()):
        paths.sort(key=lambda p: hashlib.sha1(p.encode()).hexdigest())
        chosen += paths[: 16 if group == "aenigma" else 8]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    args = parser.parse_args()
    out = os.path.join(REPO, "gpu")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(os.path.join(out, "data.zip"), "w") as archive:
        for split in ("IIIT5K/train", "IC15/train", "SVT/train"):
            copy_split(os.path.join(args.data, split), os.path.join(tmp, "data", split))
        for folder, _, files in sorted(os.walk(tmp)):
            for name in sorted(files):
                path = os.path.join(folder, name)
                archive.write(path, os.path.relpath(path, tmp))  # stored: JPEGs do not compress
    fonts = font_sample()
    with tarfile.open(os.path.join(out, "sys.tar.xz"), "w:xz") as tar:
        for path in fonts:
            tar.add(path, arcname=path.lstrip("/"))
        tar.add(os.path.realpath("/usr/share/dict/words"), arcname="usr/share/dict/words")
        tar.add("/usr/share/mypaint/backgrounds", arcname="usr/share/mypaint/backgrounds")
    print(f"{len(fonts)} fonts; payload in {out}")


if __name__ == "__main__":
    main()
