"""brlib.glyphs: the many-class dataset rendered from CJK fonts, against PIL, NumPy and GB2312.

Tests that render need Debian's CJK font packages. Without them they skip,
unless BRLIB_REQUIRE_FONTS=1 (CI sets it), which turns the skip into a failure.
"""

import os

import numpy as np
import pytest

from brlib import data, glyphs


def fonts_or_skip():
    try:
        glyphs.font_files()
    except glyphs.FontsNotFoundError as error:
        if os.environ.get("BRLIB_REQUIRE_FONTS") == "1":
            raise
        pytest.skip(str(error))


@pytest.fixture
def small(monkeypatch, tmp_path):
    """Splits of 120 and 60 images, cached in a fresh directory."""
    fonts_or_skip()
    monkeypatch.setattr(glyphs, "TRAIN_IMAGES", 120)
    monkeypatch.setattr(glyphs, "TEST_IMAGES", 60)
    monkeypatch.setenv("BRLIB_DATA_DIR", str(tmp_path))
    return tmp_path


def test_gb2312_characters_come_in_the_standard_order():
    characters = glyphs.gb2312_hanzi()
    # GB2312: 3,755 level-1 characters from 0xB0A1 (啊) to 0xD7F9 (座), 3,008 level-2 from 0xD8A1 (亍).
    assert len(characters) == 6763 and len(set(characters)) == 6763
    assert (characters[0], characters[3754], characters[3755]) == ("啊", "座", "亍")
    assert characters[3754].encode("gb2312") == b"\xd7\xf9"


def test_affine_matrix_inverts_the_documented_forward_map():
    degrees, scale, shear, dx, dy = 10.0, 0.9, 0.15, 3.0, -2.0
    matrix = glyphs.affine(degrees, scale, shear, dx, dy, size=64)
    theta = np.deg2rad(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = np.random.default_rng(0).uniform(0, 64, size=(20, 2))
    centre = np.array([32.0, 32.0])
    forward = (rotation @ np.array([[1, shear], [0, 1]]) @ (scale * (points - centre)).T).T
    moved = forward + centre + np.array([dx, dy])
    back = moved @ matrix[:, :2].T + matrix[:, 2]  # what PIL does: output pixel → input pixel
    np.testing.assert_allclose(back, points, atol=1e-9)
    np.testing.assert_allclose(glyphs.affine(0, 1, 0, 0, 0), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_an_unjittered_image_is_the_glyph_reduced_by_pil():
    fonts_or_skip()
    from PIL import Image, ImageFont

    font = ImageFont.truetype(str(glyphs.font_files()[0]), size=40, index=2)
    glyph = glyphs._draw("永", font)
    expected = np.asarray(glyph.resize((28, 28), Image.Resampling.BOX), np.float32) / 255
    np.testing.assert_allclose(glyphs.render(glyph, glyphs.affine(0, 1, 0, 0, 0)), expected,
                               atol=1 / 255)
    assert expected.max() == 1.0 and expected.mean() > 0.05  # strokes were drawn


def test_every_face_draws_the_chosen_characters():
    fonts_or_skip()
    from fontTools.ttLib import TTFont

    chosen = glyphs.characters(30)
    assert chosen == [c for c in glyphs.gb2312_hanzi() if c in set(chosen)][:30]
    for face, path in zip(glyphs.FACES, glyphs.font_files()):
        font = TTFont(str(path), fontNumber=glyphs._face_index(path, face.name), lazy=True)
        assert set(map(ord, chosen)) <= set(font.getBestCmap()), face
    assert len(glyphs.FACES) == 25 and len({f.path for f in glyphs.FACES}) == 25


def test_splits_are_balanced_deterministic_and_cached(small):
    (x_train, y_train), (x_test, y_test) = glyphs.load(6, seed=1, cache=False)
    assert x_train.shape == (120, 28, 28, 1) and x_test.shape == (60, 28, 28, 1)
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert np.bincount(y_train).tolist() == [20] * 6 and np.bincount(y_test).tolist() == [10] * 6
    again = glyphs.load(6, seed=1, cache=False)
    np.testing.assert_array_equal(again[0][0], x_train)
    np.testing.assert_array_equal(again[1][1], y_test)
    other = glyphs.load(6, seed=2, cache=False)
    assert not np.array_equal(other[0][0], x_train)
    cached = glyphs.load(6, seed=1)  # written, then read back
    assert list((small / "glyphs").glob("glyphs6_seed1_*.npz"))
    np.testing.assert_array_equal(glyphs.load(6, seed=1)[0][0], cached[0][0])
    np.testing.assert_array_equal(cached[0][0], x_train)
    # data.load knows the dataset by name.
    np.testing.assert_array_equal(data.load("glyphs6")[0][1], glyphs.load(6, seed=0)[0][1])


def test_missing_fonts_name_the_packages_to_install(tmp_path):
    with pytest.raises(glyphs.FontsNotFoundError, match="apt-get install fonts-noto-cjk"):
        glyphs.load(10, root=tmp_path)


@pytest.mark.parametrize("classes", [1, 0, 2.5, True])
def test_bad_class_counts_are_refused(classes):
    with pytest.raises(ValueError, match="`classes` must be an integer >= 2"):
        glyphs.load(classes)


def test_dataset_names():
    assert data.is_known("glyphs300") and data.is_known("fashion_mnist")
    assert not data.is_known("glyphs0") and not data.is_known("glyphs") and not data.is_known("x")
    with pytest.raises(ValueError, match="glyphs<classes>"):
        data.load("glyphsx")


def test_font_hashes_are_sha256_of_the_files():
    fonts_or_skip()
    import hashlib

    hashes = glyphs.font_hashes()
    path = glyphs.font_files()[-1]
    assert hashes[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(hashes) == 25
