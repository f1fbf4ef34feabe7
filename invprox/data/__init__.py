"""Data: image folders, the embedded default images, shared data paths, and noise.

Everything here returns float tensors ``(C, H, W)`` in ``[0, 1]``. Pillow and scikit-image are
imported only when an image is actually read.
"""

from .embedded import (
    EMBEDDED_IMAGES,
    EMBEDDED_SPLITS,
    EmbeddedPatches,
    embedded_images,
    embedded_names,
    skimage_data_dir,
)
from .folder import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    fit_square,
    list_images,
    load_image,
    random_patches,
)
from .noise import NoisyPairs, add_gaussian_noise
from .paths import DATA_ENV, dataset_path, make_dataset, shared_data_dir

__all__ = [
    "DATA_ENV",
    "EMBEDDED_IMAGES",
    "EMBEDDED_SPLITS",
    "IMAGE_EXTENSIONS",
    "EmbeddedPatches",
    "ImageFolder",
    "NoisyPairs",
    "add_gaussian_noise",
    "dataset_path",
    "embedded_images",
    "embedded_names",
    "fit_square",
    "list_images",
    "load_image",
    "make_dataset",
    "random_patches",
    "shared_data_dir",
    "skimage_data_dir",
]
