"""Datasets, found locally or through Keras's download, checked against known checksums.

Each loader returns `(x_train, y_train), (x_test, y_test)`: float32 images in
[0, 1], channels last, and int32 labels. Files are looked for, in order, in
the `data_dir` argument, in `$BRLIB_DATA_DIR`, in a system copy (Debian's
`dataset-fashion-mnist`), in the Keras cache, and finally downloaded by Keras.
"""

import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np

# SHA-256 of each file's content. For Fashion-MNIST that is the decompressed
# IDX bytes, which do not depend on how a source gzipped them (Debian's
# archives differ from the originals byte for byte). CIFAR archives hold
# pickles, so the archive itself is checked before anything is unpickled.
KNOWN_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
}

FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
FASHION_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
SYSTEM_DIRS = {"fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")]}
SUBDIRS = {"fashion_mnist": "fashion-mnist", "cifar10": "", "cifar100": ""}


class DatasetNotFoundError(FileNotFoundError):
    """No verified copy of a dataset could be found or downloaded."""


class ChecksumError(ValueError):
    """A dataset file's content does not match its known SHA-256."""


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _verify(name, data, path):
    if _sha256(data) != KNOWN_SHA256[name]:
        raise ChecksumError(
            f"{path} does not match the known SHA-256 of {name}; the file is damaged "
            "or not the original. Delete it and fetch it again."
        )


def _keras_cache():
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _candidate_dirs(dataset, data_dir):
    dirs = []
    for root in (data_dir, os.environ.get("BRLIB_DATA_DIR")):
        if root:
            dirs += [Path(root), Path(root) / SUBDIRS[dataset]]
    dirs += SYSTEM_DIRS.get(dataset, [])
    dirs.append(_keras_cache() / SUBDIRS[dataset])
    return dirs


def _locate(dataset, files, data_dir, download, urls):
    """The directory holding all `files`, downloading them through Keras if allowed.

    An explicit `data_dir` must hold the files: falling through to another
    copy would hide a typo and train on data the caller did not choose.
    """
    if data_dir is not None:
        explicit = [d for d in (Path(data_dir), Path(data_dir) / SUBDIRS[dataset])
                    if all((d / f).is_file() for f in files)]
        if not explicit:
            state = "does not exist" if not Path(data_dir).is_dir() else "lacks them"
            raise DatasetNotFoundError(
                f"{dataset}: `data_dir`={str(data_dir)!r} must hold {', '.join(files)} "
                f"(directly or in {SUBDIRS[dataset] or 'itself'}/), but it {state}.")
        return explicit[0]
    for directory in _candidate_dirs(dataset, data_dir):
        if all((directory / f).is_file() for f in files):
            return directory
    if download:
        try:
            import keras

            for name, url in zip(files, urls):
                keras.utils.get_file(name, origin=url, cache_subdir=str(
                    Path("datasets") / SUBDIRS[dataset]))
            return _keras_cache() / SUBDIRS[dataset]
        except Exception as error:  # no network, proxy, HTTP error: all end here
            reason = f" The download failed: {error}."
    else:
        reason = ""
    looked = ", ".join(str(d) for d in _candidate_dirs(dataset, data_dir))
    raise DatasetNotFoundError(
        f"{dataset}: could not find {', '.join(files)}.{reason} Put these files in one "
        f"directory and pass it as data_dir= or set BRLIB_DATA_DIR to it "
        f"(looked in: {looked})."
    )


# ---------------------------------------------------------------------------
# Fashion-MNIST: gzipped IDX files
# ---------------------------------------------------------------------------
def parse_idx(data):
    """Parses IDX bytes (unsigned bytes only) into a NumPy array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes (magic 0x0000 08 NN)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"IDX header says {shape} but holds {values.size} values")
    return values.reshape(shape)


def fashion_mnist(data_dir=None, download=True):
    """Fashion-MNIST: 60k train and 10k test images of 28×28×1, 10 classes."""
    directory = _locate("fashion_mnist", FASHION_FILES, data_dir, download,
                        [FASHION_URL + f for f in FASHION_FILES])
    arrays = []
    for name in FASHION_FILES:
        content = gzip.decompress((directory / name).read_bytes())
        _verify(name, content, directory / name)
        arrays.append(parse_idx(content))
    x_train, y_train, x_test, y_test = arrays
    return (_images(x_train[..., None]), y_train.astype(np.int32)), (
        _images(x_test[..., None]), y_test.astype(np.int32))


# ---------------------------------------------------------------------------
# CIFAR: pickles inside a tar.gz
# ---------------------------------------------------------------------------
def _read_cifar(dataset, archive_name, members, label_key, data_dir, download):
    directory = _locate(dataset, [archive_name], data_dir, download, [CIFAR_URL + archive_name])
    raw = (directory / archive_name).read_bytes()
    _verify(archive_name, raw, directory / archive_name)  # before any unpickling
    splits = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
        for names in members:
            images, labels = [], []
            for member in names:
                batch = pickle.load(archive.extractfile(member), encoding="bytes")
                images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(batch[label_key], np.int32))
            x = np.concatenate(images).transpose(0, 2, 3, 1)
            splits.append((_images(x), np.concatenate(labels)))
    return tuple(splits)


def cifar100(data_dir=None, download=True):
    """CIFAR-100: 50k train and 10k test images of 32×32×3, 100 fine labels."""
    return _read_cifar("cifar100", "cifar-100-python.tar.gz",
                       [["cifar-100-python/train"], ["cifar-100-python/test"]],
                       b"fine_labels", data_dir, download)


def cifar10(data_dir=None, download=True):
    """CIFAR-10: 50k train and 10k test images of 32×32×3, 10 classes."""
    train = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
    return _read_cifar("cifar10", "cifar-10-python.tar.gz",
                       [train, ["cifar-10-batches-py/test_batch"]], b"labels", data_dir, download)


def _images(uint8_images):
    return (uint8_images.astype(np.float32) / 255.0)


LOADERS = {"fashion_mnist": fashion_mnist, "cifar10": cifar10, "cifar100": cifar100}
CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}  # of each loader's dataset
# The glyph dataset (brlib.glyphs), rendered here: "glyphs300" has 300 classes.
GLYPHS = re.compile(r"glyphs([1-9][0-9]*)")


def is_known(name):
    """Whether `name` names a dataset that `load` knows."""
    return name in LOADERS or bool(GLYPHS.fullmatch(str(name)))


def load(name, data_dir=None, download=True):
    """Loads a dataset by name: `fashion_mnist`, `cifar10`, `cifar100`, or `glyphs<classes>`.

    The glyph dataset is rendered from installed fonts (and cached), never
    downloaded: `data_dir` and `download` do not apply to it.
    """
    glyphs = GLYPHS.fullmatch(str(name))
    if glyphs:
        from brlib import glyphs as glyph_dataset

        return glyph_dataset.load(int(glyphs.group(1)))
    if name not in LOADERS:
        raise ValueError(f"`name` must be one of {sorted(LOADERS)} or glyphs<classes> (for "
                         f"example glyphs300); got name={name!r}.")
    return LOADERS[name](data_dir=data_dir, download=download)


def as_dataset(images, labels, batch_size, seed, shuffle=True):
    """A tf.data pipeline of (images, labels) batches, reshuffled every epoch."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=shuffle)
