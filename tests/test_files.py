"""brlib.files.write_atomic: the bytes written, read back by plain Python."""

import os

import pytest

from brlib.files import write_atomic


def test_writes_the_bytes_and_creates_the_directories(tmp_path):
    path = tmp_path / "a" / "b" / "settings.json"
    write_atomic(path, b'{"steps": 9}')
    assert path.read_bytes() == b'{"steps": 9}'
    write_atomic(str(path), b"\x00\xff" * 1000)  # a str path, binary data, replaced
    assert path.read_bytes() == b"\x00\xff" * 1000
    assert sorted(os.listdir(path.parent)) == ["settings.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "run.csv"
    write_atomic(path, b"step\n1\n")
    with pytest.raises(TypeError):
        write_atomic(path, "text, not bytes")
    assert path.read_bytes() == b"step\n1\n"
    assert sorted(os.listdir(tmp_path)) == ["run.csv"]  # the temporary is removed


def test_the_temporary_file_is_named_after_the_process(tmp_path, monkeypatch):
    # Two processes writing the same file must not share a temporary: each renames its own.
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (
        seen.append(os.path.basename(source)), real_replace(source, target)))
    write_atomic(tmp_path / "x.bin", b"1")
    assert seen == [f".x.bin.{os.getpid()}.tmp"]
