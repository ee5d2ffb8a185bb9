"""A smaller copy of an image folder: each image re-encoded as JPEG with its shorter side at most --side.

Used to take the flowers to a machine that accepts only a small upload (the GPU figures of the
README were measured on such a copy: shorter side 180, quality 85, about 51 MB instead of 218).
File names and the folder layout are kept, so the seed-123 split picks the same files.

    python benchmarks/smaller_copy.py SRC_FOLDER DST_FOLDER [--side 180] [--quality 85]
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from sppnet.predict import expand_images


def shrink(src: Path, dst: Path, side: int, quality: int) -> str | None:
    """Writes the smaller copy; returns a one-line reason instead when ``src`` cannot be read."""
    try:
        with Image.open(src) as image:
            image = image.convert("RGB")  # decodes the file, once
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{src}: skipped, not a readable image ({err})"
    scale = side / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst.with_suffix(src.suffix if src.suffix.lower() in (".jpg", ".jpeg") else ".jpg"), quality=quality)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--side", type=int, default=180, help="largest shorter side, in pixels (default 180)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality (default 85)")
    args = parser.parse_args()
    if not args.src.is_dir():
        parser.exit(2, f"error: {args.src}: not a folder\n")
    if args.dst.exists():
        parser.exit(2, f"error: {args.dst}: already exists; give a new folder\n")
    files = expand_images([args.src])  # the image files sppnet itself would read, sorted
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        skipped = [r for r in pool.map(lambda p: shrink(p, args.dst / p.relative_to(args.src), args.side, args.quality),
                                       files) if r]
    for reason in skipped:
        print(reason)
    print(f"{len(files) - len(skipped)} images -> {args.dst}")


if __name__ == "__main__":
    main()
