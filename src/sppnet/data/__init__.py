"""Datasets: where images come from, which ones there are, how they are decoded and stored.

    sources   a folder, an archive of one, or "flowers" (downloaded, verified, extracted safely)
    index     scan (Keras' file order), the Keras-compatible split, the tuning hold-out
    decode    any image file -> upright RGB uint8, with limits; many files in parallel
    store     the decoded images in memory or memory-mapped, and build_store()
    summary   the text ``sppnet data`` prints

Everything public is re-exported here: ``from sppnet.data import locate, scan, split``.
"""

from ..errors import DataError
from .decode import MAX_PIXELS, LoadResult, decode_image, decode_many, image_size, load_images, upright_size
from .index import (IMAGE_EXTENSIONS, Dataset, RunSets, calibration_split, expand_images, is_image_name, run_sets, run_split,
                    scan, shown, split, split_layout)
from .sources import ARCHIVE_SUFFIXES, KNOWN_DATASETS, RemoteArchive, cache_dir, download, extract_archive, locate
from .store import (
    MEMORY_SHARE,
    ImageStore,
    available_memory,
    build_store,
    check_store_dir,
    estimate_store_bytes,
    store_folder,
)
from .summary import summarize

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_PIXELS", "MEMORY_SHARE", "ARCHIVE_SUFFIXES", "KNOWN_DATASETS", "RemoteArchive",
    "Dataset", "DataError", "LoadResult", "ImageStore", "cache_dir", "locate", "download", "extract_archive", "scan",
    "split", "run_split", "calibration_split", "is_image_name", "expand_images", "decode_image", "decode_many", "load_images",
    "image_size", "upright_size", "available_memory", "estimate_store_bytes", "store_folder", "check_store_dir",
    "build_store", "summarize", "split_layout", "run_sets", "RunSets", "shown",
]
