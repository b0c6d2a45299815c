"""Glyphs: a many-class image dataset rendered offline from Debian's CJK fonts.

Each class is one Chinese character, each image that character drawn in one
of 25 typefaces at 28 × 28 pixels with a random rotation, scale, shear and
shift. The dataset exists to vary the number of classes with everything else
fixed, which no downloadable dataset allows: `load(classes, seed)` returns
30,000 training and 7,500 test images whatever the number of classes.

Train and test images come from the same 25 typefaces and differ only in
their random jitter. Holding typefaces out of training would make the test
split a different distribution, and the moving averages of batch norm would
then be wrong for a reason other than the one the experiments study (the
statistics of the groups an example is normalized with).

Characters are taken in GB2312 order, keeping those that every typeface
draws. Images are cached under `$BRLIB_DATA_DIR/glyphs` (or
`~/.cache/brlib/glyphs`), keyed by the settings and the SHA-256 of every
font file, which `font_hashes` returns so that results can record them.
"""

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from brlib.files import write_atomic
from brlib.validation import check_integer

# apt packages that hold the typefaces (Debian and Ubuntu).
PACKAGES = ("fonts-noto-cjk", "fonts-noto-cjk-extra", "fonts-arphic-ukai", "fonts-arphic-uming",
            "fonts-wqy-zenhei", "fonts-wqy-microhei", "fonts-lxgw-wenkai", "fonts-hanazono")
FONT_ROOT = Path("/usr/share/fonts")
TRAIN_IMAGES, TEST_IMAGES = 30_000, 7_500
SIZE = 28
CANVAS = 64  # glyphs are drawn and jittered at this size, then reduced to SIZE
VERSION = 1  # of the rendering below; part of the cache key


@dataclasses.dataclass(frozen=True)
class Face:
    """One typeface: its apt package, its file under FONT_ROOT, and its name in that file."""

    package: str
    path: str
    name: str


_NOTO_SANS = ("Black", "Bold", "DemiLight", "Light", "Medium", "Regular", "Thin")
_NOTO_SERIF = ("Black", "Bold", "ExtraLight", "Light", "Medium", "Regular", "SemiBold")
FACES = (
    *(Face("fonts-noto-cjk" if w in ("Bold", "Regular") else "fonts-noto-cjk-extra",
           f"opentype/noto/NotoSansCJK-{w}.ttc", "Noto Sans CJK SC") for w in _NOTO_SANS),
    *(Face("fonts-noto-cjk" if w in ("Bold", "Regular") else "fonts-noto-cjk-extra",
           f"opentype/noto/NotoSerifCJK-{w}.ttc", "Noto Serif CJK SC") for w in _NOTO_SERIF),
    Face("fonts-arphic-ukai", "truetype/arphic/ukai.ttc", "AR PL UKai CN"),
    Face("fonts-arphic-uming", "truetype/arphic/uming.ttc", "AR PL UMing CN"),
    Face("fonts-wqy-zenhei", "truetype/wqy/wqy-zenhei.ttc", "WenQuanYi Zen Hei"),
    Face("fonts-wqy-microhei", "truetype/wqy/wqy-microhei.ttc", "WenQuanYi Micro Hei"),
    *(Face("fonts-lxgw-wenkai", f"truetype/lxgw-wenkai/LXGWWenKai{kind}-{w}.ttf", "")
      for kind in ("", "Mono") for w in ("Regular", "Bold", "Light")),
    Face("fonts-hanazono", "truetype/hanazono/HanaMinA.ttf", ""),
)


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Ranges of the random affine transform of each image (shift in pixels of the 28 × 28 image)."""

    degrees: float = 12.0
    scale: tuple = (0.8, 1.05)
    shear: float = 0.2
    shift: float = 4.0


class FontsNotFoundError(FileNotFoundError):
    """A typeface of the glyph dataset is not installed."""


def font_files(root=FONT_ROOT):
    """The font file of every face, checked to exist; the error names the apt packages."""
    files = [Path(root) / face.path for face in FACES]
    missing = sorted({face.package for face, path in zip(FACES, files) if not path.is_file()})
    if missing:
        raise FontsNotFoundError(
            f"the glyph dataset needs the CJK fonts of {', '.join(missing)} (missing under "
            f"{root}). Install them with: apt-get install {' '.join(PACKAGES)}")
    return files


@functools.lru_cache(maxsize=4)
def font_hashes(root=FONT_ROOT):
    """{font file name: SHA-256 of its content}, for every file the faces use (read once per
    process: about 400 MB of fonts)."""
    hashes = {}
    for path in font_files(root):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        hashes[path.name] = digest.hexdigest()
    return hashes


def _face_index(path, name):
    """The index of the face whose family starts with `name` in a font collection (0 for a
    single font): a collection's weights are named "Noto Sans CJK SC Black" and so on."""
    if not name:
        return 0
    from fontTools.ttLib import TTCollection

    names = [font["name"].getDebugName(1) for font in TTCollection(str(path), lazy=True).fonts]
    matches = [i for i, family in enumerate(names) if family == name] or [
        i for i, family in enumerate(names) if family.startswith(name)]  # "… SC Black"
    if len(matches) != 1:
        raise ValueError(f"{path} must hold one face named {name!r}…; it holds {names}")
    return matches[0]


def _codepoints(path, index):
    from fontTools.ttLib import TTFont

    return set(TTFont(str(path), fontNumber=index, lazy=True).getBestCmap())


def gb2312_hanzi():
    """The 6,763 Chinese characters of GB2312, in its order (level 1, then level 2)."""
    characters = []
    for row in range(0xB0, 0xF8):
        for column in range(0xA1, 0xFF):
            try:
                characters.append(bytes([row, column]).decode("gb2312"))
            except UnicodeDecodeError:  # the unassigned end of row 0xD7
                continue
    return characters


def characters(count, root=FONT_ROOT):
    """The first `count` GB2312 characters that every face draws."""
    files = font_files(root)
    common = None
    for face, path in zip(FACES, files):
        drawn = _codepoints(path, _face_index(path, face.name))
        common = drawn if common is None else common & drawn
    chosen = [c for c in gb2312_hanzi() if ord(c) in common][:count]
    if len(chosen) < count:
        raise ValueError(f"`classes`={count} exceeds the {len(chosen)} characters every face draws")
    return chosen


def _draw(character, font):
    """One character, centred on a CANVAS × CANVAS black image, white strokes, as float32."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), character, font=font)
    draw.text(((CANVAS - (right - left)) / 2 - left, (CANVAS - (bottom - top)) / 2 - top),
              character, fill=255, font=font)
    return image


def affine(degrees, scale, shear, shift_x, shift_y, size=CANVAS):
    """The 2 × 3 matrix mapping output pixels to input pixels (what PIL's transform takes).

    The forward map, about the image centre, is shift ∘ rotation ∘ shear ∘ scale:
    a point p goes to R(θ) · [[1, shear], [0, 1]] · s · (p − c) + c + t.
    """
    theta = np.deg2rad(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inverse = np.linalg.inv(forward)
    centre = np.array([size / 2, size / 2])
    offset = centre - inverse @ (centre + np.array([shift_x, shift_y]))
    return np.concatenate([inverse, offset[:, None]], axis=1)


def render(glyph, matrix):
    """`glyph` (a CANVAS image) moved by `matrix` (see `affine`), reduced to SIZE × SIZE in [0, 1]."""
    from PIL import Image

    moved = glyph.transform((CANVAS, CANVAS), Image.Transform.AFFINE, tuple(matrix.ravel()),
                            resample=Image.Resampling.BILINEAR)
    small = moved.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _draw_jitter(rng, count, jitter):
    factor = CANVAS / SIZE  # shifts are given in pixels of the final image
    return np.stack([rng.uniform(-jitter.degrees, jitter.degrees, count),
                     rng.uniform(*jitter.scale, count),
                     rng.uniform(-jitter.shear, jitter.shear, count),
                     factor * rng.uniform(-jitter.shift, jitter.shift, count),
                     factor * rng.uniform(-jitter.shift, jitter.shift, count)], axis=1)


def _split(glyphs, classes, count, rng, jitter):
    """`count` images: image i shows class i mod classes in face (i div classes) mod faces."""
    index = np.arange(count)
    labels = (index % classes).astype(np.int32)
    faces = (index // classes) % len(FACES)
    parameters = _draw_jitter(rng, count, jitter)
    images = np.stack([render(glyphs[faces[i]][labels[i]], affine(*parameters[i]))
                       for i in range(count)])
    order = rng.permutation(count)  # so that a prefix of the split is not one face
    return images[order][..., None], labels[order]


def _cache_dir():
    root = os.environ.get("BRLIB_DATA_DIR")
    return Path(root) / "glyphs" if root else Path.home() / ".cache" / "brlib" / "glyphs"


def load(classes, seed=0, root=FONT_ROOT, cache=True, jitter=Jitter()):
    """The glyph dataset with `classes` classes: ((x_train, y_train), (x_test, y_test)).

    30,000 training and 7,500 test images of 28 × 28 × 1 in [0, 1], the
    classes equally often, every face equally often within a class. The
    result is a function of (classes, seed, jitter) and the font files, and
    is cached under that key.

    Args:
        classes: Number of characters, from 2 up to what every face draws.
        seed: Seed of the jitter and of the order of the images.
        root: Where the fonts are installed.
        cache: Whether to read and write the cache.
        jitter: Ranges of the random transform.

    Raises:
        FontsNotFoundError: when a font package is missing.
    """
    check_integer("classes", classes, "an integer >= 2", lambda v: v >= 2)
    check_integer("seed", seed, "an integer >= 0", lambda v: v >= 0)
    key = json.dumps({"classes": classes, "seed": seed, "jitter": dataclasses.asdict(jitter),
                      "fonts": font_hashes(root), "version": VERSION}, sort_keys=True)
    path = _cache_dir() / f"glyphs{classes}_seed{seed}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if cache and path.is_file():
        with np.load(path) as stored:
            return (stored["x_train"], stored["y_train"]), (stored["x_test"], stored["y_test"])
    from PIL import ImageFont

    chosen = characters(classes, root)
    glyphs = []
    for face, file in zip(FACES, font_files(root)):
        font = ImageFont.truetype(str(file), size=int(CANVAS * 0.8),
                                  index=_face_index(file, face.name))
        glyphs.append([_draw(character, font) for character in chosen])
    rng = np.random.default_rng([seed, classes, 28])
    train = _split(glyphs, classes, TRAIN_IMAGES, rng, jitter)
    test = _split(glyphs, classes, TEST_IMAGES, rng, jitter)
    if cache:
        buffer = _npz_bytes(x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
        write_atomic(path, buffer)
    return train, test


def _npz_bytes(**arrays):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
