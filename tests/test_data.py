"""brlib.data on format-exact fixture files, and on Debian's real Fashion-MNIST when installed."""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from brlib import data


def idx_bytes(array):
    """IDX encoding written from the format's description: magic, big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5),
    }
    for name, array in arrays.items():
        content = idx_bytes(array)
        (tmp_path / name).write_bytes(gzip.compress(content))
        monkeypatch.setitem(data.KNOWN_SHA256, name, hashlib.sha256(content).hexdigest())
    return tmp_path, arrays


def cifar100_archive(path, train, test):
    """A cifar-100-python.tar.gz laid out as the original: train, test, meta pickles."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member, (images, fine) in (("train", train), ("test", test)):
            batch = {b"filenames": [b"x.png"] * len(fine), b"batch_label": member.encode(),
                     b"fine_labels": list(map(int, fine)),
                     b"coarse_labels": [int(f) // 5 for f in fine],
                     b"data": images.reshape(len(images), 3 * 32 * 32).astype(np.uint8)}
            _add(archive, f"cifar-100-python/{member}", pickle.dumps(batch, protocol=2))
        _add(archive, "cifar-100-python/meta", pickle.dumps({b"fine_label_names": []}))
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _add(archive, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def test_fashion_mnist_fixture(fashion_dir):
    directory, arrays = fashion_dir
    (x_train, y_train), (x_test, y_test) = data.fashion_mnist(data_dir=directory, download=False)
    assert x_train.shape == (12, 28, 28, 1) and x_train.dtype == np.float32
    np.testing.assert_allclose(x_train[..., 0] * 255, arrays["train-images-idx3-ubyte.gz"],
                               atol=1e-4)
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert x_test.shape == (5, 28, 28, 1) and 0 <= x_test.min() and x_test.max() <= 1


def test_environment_variable_is_a_source(fashion_dir, monkeypatch):
    monkeypatch.setenv("BRLIB_DATA_DIR", str(fashion_dir[0]))
    (x_train, _), _ = data.load("fashion_mnist", download=False)
    assert len(x_train) == 12


def test_cifar100_fixture(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    train = (rng.integers(0, 256, (6, 3, 32, 32)), rng.integers(0, 100, 6))
    test = (rng.integers(0, 256, (4, 3, 32, 32)), rng.integers(0, 100, 4))
    digest = cifar100_archive(tmp_path / "cifar-100-python.tar.gz", train, test)
    monkeypatch.setitem(data.KNOWN_SHA256, "cifar-100-python.tar.gz", digest)
    (x_train, y_train), (x_test, y_test) = data.cifar100(data_dir=tmp_path, download=False)
    assert x_train.shape == (6, 32, 32, 3) and x_test.shape == (4, 32, 32, 3)
    # Channel-major rows (R plane, G plane, B plane) become channels-last pixels.
    np.testing.assert_allclose(x_train[2, 5, 7] * 255, train[0][2, :, 5, 7], atol=1e-4)
    np.testing.assert_array_equal(y_train, train[1])
    np.testing.assert_array_equal(y_test, test[1])


def test_unverified_pickle_is_never_loaded(tmp_path, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        _add(archive, "cifar-100-python/train", pickle.dumps(Boom()))
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(data.ChecksumError, match="SHA-256"):
        data.cifar100(data_dir=tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_damaged_idx_file_is_rejected(fashion_dir):
    directory, _ = fashion_dir
    path = directory / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[-1] ^= 1
    path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(data.ChecksumError, match="t10k-labels"):
        data.fashion_mnist(data_dir=directory, download=False)


def test_missing_files_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("BRLIB_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.cifar100(download=False)
    assert "cifar-100-python.tar.gz" in str(error.value) and "BRLIB_DATA_DIR" in str(error.value)


@pytest.mark.parametrize("make", [False, True])
def test_an_explicit_data_dir_without_the_files_is_an_error(fashion_dir, tmp_path, monkeypatch,
                                                            make):
    # A copy elsewhere (here in $BRLIB_DATA_DIR) must not stand in for a wrong data_dir.
    directory, _ = fashion_dir
    monkeypatch.setenv("BRLIB_DATA_DIR", str(directory))
    wrong = tmp_path / "wrong"
    if make:
        wrong.mkdir()
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.fashion_mnist(data_dir=wrong, download=False)
    message = str(error.value)
    assert "data_dir" in message and str(wrong) in message
    assert ("lacks them" if make else "does not exist") in message


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="name.*fashion_mnist"):
        data.load("imagenet")


def test_tf_dataset_reshuffles_every_epoch():
    images = np.arange(16, dtype=np.float32)
    dataset = data.as_dataset(images, np.arange(16), batch_size=4, seed=0)
    first = np.concatenate([x.numpy() for x, _ in dataset])
    second = np.concatenate([x.numpy() for x, _ in dataset])
    assert sorted(first) == sorted(second) == list(range(16))
    assert not np.array_equal(first, second)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(monkeypatch, tmp_path):
    monkeypatch.delenv("BRLIB_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (x_train, y_train), (x_test, y_test) = data.fashion_mnist(download=False)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
