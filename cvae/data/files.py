"""The data sets that need no TFDS: scikit-learn's ``digits`` (offline anywhere) and arrays
saved with numpy (``npz:PATH``, ``npy:DIR``).

* ``digits``: scikit-learn's bundled 8×8 digits. Its 0–16 intensities are mapped to 0–255
  (round(v·255/16)); the split is fixed: a permutation drawn by
  ``numpy.random.default_rng(0)``, first 1,500 images train, remaining 297 test.
* ``npy:DIR``: ``x.npy`` (uint8 N×H×W×C), optional ``y.npy``, and ``x_<split>.npy`` /
  ``y_<split>.npy``: memory-mapped, so a set larger than memory can be streamed from it.
* ``npz:PATH``: ``x`` (N×H×W[×C], uint8 0–255 or float in [0, 1]) and optional ``y``
  for the train split; ``x_<split>`` / ``y_<split>`` for any other (``x_test``, …).

Each ``*_splits`` function returns {split name: a function reading that split}, which
``splits.select`` calls only for the splits a split string names.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib

import numpy as np

from cvae.data.splits import Dataset, DatasetInfo

DIGITS_TRAIN_SIZE = 1500


def digits_splits() -> dict:
    """digits' fixed split: a permutation by default_rng(0), 1,500 train, 297 test."""
    pixels, targets = _load_digits()
    order = np.random.default_rng(0).permutation(len(pixels))
    chosen = {"train": order[:DIGITS_TRAIN_SIZE], "test": order[DIGITS_TRAIN_SIZE:]}
    images = np.round(pixels * 255.0 / 16.0).astype(np.uint8)[..., None]
    info = DatasetInfo("digits", (8, 8, 1), 10, (0.0, 255.0))
    return {
        split: (lambda idx=idx: Dataset(images[idx], targets[idx].astype(np.int32), info))
        for split, idx in chosen.items()
    }


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797×8×8 float 0–16 images, labels): ``sklearn.datasets.load_digits()``'s arrays,
    read from the file scikit-learn ships as it reads it, without importing scikit-learn
    (1.4 s of every start of a process that trains on digits)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the digits data set ships with scikit-learn: pip install scikit-learn")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as rows:
        table = np.loadtxt(rows, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def npz_splits(path: str) -> dict:
    """Every split of an npz data set: ``x``/``y`` is "train", ``x_<s>``/``y_<s>`` is s."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"npz data set {path!r}: no such file")
    try:
        archive = np.load(file, allow_pickle=False)
    except Exception as err:  # a truncated or non-npz file
        raise ValueError(
            f"npz data set {path!r} could not be read ({err}); save it with "
            "numpy.savez(path, x=images, y=labels)"
        ) from err
    names = [
        "train" if k == "x" else k[2:] for k in archive.files if k == "x" or k.startswith("x_")
    ]
    if not names:
        raise ValueError(
            f"npz data set {path!r} has no array 'x' nor any 'x_<split>' (it "
            f"has {sorted(archive.files)}); the train split is 'x' (and 'y'), "
            "other splits 'x_<split>'"
        )
    return {name: functools.partial(_npz_split, archive, path, name) for name in names}


def npy_splits(path: str) -> dict:
    """Every split of an ``npy:DIR`` set: ``x.npy``/``y.npy`` is "train", ``x_<s>.npy`` /
    ``y_<s>.npy`` is s; uint8 N×H×W×C images, memory-mapped (read only where indexed)."""
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise ValueError(
            f"npy data set {path!r}: no such directory (it holds x.npy, "
            "optional y.npy, and x_<split>.npy for other splits)"
        )
    files = {
        ("train" if f.stem == "x" else f.stem[2:]): f
        for f in directory.glob("x*.npy")
        if f.stem == "x" or f.stem.startswith("x_")
    }
    if not files:
        raise ValueError(f"npy data set {path!r} has no x.npy nor any x_<split>.npy")

    def read(split: str) -> Dataset:
        try:
            x = np.load(files[split], mmap_mode="r")
        except Exception as err:
            raise ValueError(
                f"npy data set {path!r}: {files[split].name} could not be read "
                f"({err}); save it with numpy.save"
            ) from err
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
            raise ValueError(
                f"npy data set {path!r}: {files[split].name} must be uint8 "
                f"N×H×W×C with N > 0, got {x.dtype} {x.shape}"
            )
        labels_file = files[split].with_name(files[split].name.replace("x", "y", 1))
        labels, num_classes = None, 0
        if labels_file.exists():
            labels = np.asarray(np.load(labels_file), np.int32)
            if labels.shape != (len(x),) or labels.min() < 0:
                raise ValueError(
                    f"npy data set {path!r}: {labels_file.name} must hold "
                    f"{len(x)} integer labels ≥ 0, got shape {labels.shape}"
                )
            num_classes = int(labels.max()) + 1
        info = DatasetInfo(
            f"npy:{path}", tuple(int(s) for s in x.shape[1:]), num_classes, (0.0, 255.0)
        )
        return Dataset(x, labels, info)

    return {split: functools.partial(read, split) for split in files}


def _npz_split(archive, path: str, split: str) -> Dataset:
    x_key, y_key = ("x", "y") if split == "train" else (f"x_{split}", f"y_{split}")
    x = archive[x_key]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(
            f"npz data set {path!r}: {x_key!r} must be N×H×W or N×H×W×C with "
            f"N > 0, got shape {x.shape}"
        )
    if x.dtype == np.uint8:
        pixel_range = (0.0, 255.0)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(
                f"npz data set {path!r}: float {x_key!r} must be finite and in "
                f"[0, 1], got [{np.nanmin(x):g}, {np.nanmax(x):g}]"
            )
        x, pixel_range = x.astype(np.float32), (0.0, 1.0)
    else:
        raise ValueError(f"npz data set {path!r}: {x_key!r} must be uint8 or float, got {x.dtype}")
    labels, num_classes = None, 0
    if y_key in archive:
        y = archive[y_key]
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(
                f"npz data set {path!r}: {y_key!r} must hold {len(x)} integer "
                f"labels ≥ 0, got shape {y.shape} and dtype {y.dtype}"
            )
        labels, num_classes = y.astype(np.int32), int(y.max()) + 1
        if "num_classes" in archive:
            num_classes = int(archive["num_classes"])
    info = DatasetInfo(f"npz:{path}", tuple(int(s) for s in x.shape[1:]), num_classes, pixel_range)
    return Dataset(x, labels, info)
