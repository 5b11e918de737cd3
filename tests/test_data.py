"""Data folders in the VWW layout, bad images, splits, and the synthetic default."""
import numpy as np
import pytest
from PIL import Image

from tinyq.data import layout, load_folder, load_splits, synthetic
from tinyq.errors import TinyqError


def write_images(folder, n, size=(40, 30), mode="RGB", fmt="JPEG", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp"}[fmt]
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        arr = rng.integers(0, 255, shape, dtype=np.uint8)
        if mode == "RGBA":
            arr = rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.{ext}", fmt)


def make_vww(root, n=6, splits=True):
    for split in (["train", "val", "test"] if splits else [""]):
        for label in ("person", "non_person"):
            write_images(root / split / label, n)
    return root


def test_layout_with_and_without_splits(tmp_path):
    assert set(layout(make_vww(tmp_path / "a"))) == {"train", "val", "test"}
    assert set(layout(make_vww(tmp_path / "b", splits=False))) == {"all"}


def test_mixed_formats_and_sizes_are_resized(tmp_path):
    root = tmp_path / "d"
    write_images(root / "person", 2, size=(200, 50), fmt="PNG")
    write_images(root / "person", 2, size=(17, 17), mode="L", fmt="BMP", seed=1)
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 20, 4), np.uint8)).save(root / "person" / "rgba.png")
    Image.fromarray((np.arange(400, dtype=np.uint16).reshape(20, 20) * 160)).save(root / "person" / "deep.png")
    write_images(root / "non_person", 3)
    data = load_folder(root, 32, 3)
    assert data.x.shape == (9, 32, 32, 3) and data.x.dtype == np.uint8
    assert data.counts() == {"non_person": 3, "person": 6} and not data.skipped
    grey = load_folder(root, 32, 1)
    assert grey.x.shape == (9, 32, 32, 1)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = make_vww(tmp_path / "d", n=3, splits=False)
    (root / "person" / "empty.jpg").write_bytes(b"")
    good = (root / "person" / "img0.jpg").read_bytes()
    (root / "person" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "person" / "notes.txt").write_text("not an image")
    data = load_folder(root, 16)
    assert len(data) + len(data.skipped) == 9
    assert len(data.skipped) >= 2 and any("empty.jpg" in s for s in data.skipped)
    note = data.skipped_note(shown=2)  # what check and train print: the count and where to look
    assert note.startswith(f"{len(data.skipped)} unreadable skipped (") and data.skipped[0] in note
    assert note.endswith(", ...)") == (len(data.skipped) > 2)
    assert load_folder(make_vww(tmp_path / "ok", n=2, splits=False), 16).skipped_note() == ""


def test_seeded_split_is_stratified_and_reproducible(tmp_path):
    root = make_vww(tmp_path / "d", n=20, splits=False)
    a = load_splits(root, 16, seed=3)
    b = load_splits(root, 16, seed=3)
    assert [len(a[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    np.testing.assert_array_equal(a["test"].x, b["test"].x)
    assert a["test"].counts() == {"non_person": 2, "person": 2}


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_class_dirs", "one_class", "only_corrupt"])
def test_bad_folders_raise_clear_errors(tmp_path, case):
    root = tmp_path / "d"
    if case == "file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "no_class_dirs":
        write_images(root / "cats", 2)
    elif case == "one_class":
        write_images(root / "person", 3)
    elif case == "only_corrupt":
        (root / "person").mkdir(parents=True)
        (root / "non_person").mkdir()
        (root / "person" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(TinyqError) as err:
        load_splits(root, 16)
    msg = str(err.value)
    assert "\n" not in msg and str(root) in msg


def test_synthetic_is_seeded_balanced_and_varied():
    a, b, c = synthetic(60, seed=1), synthetic(60, seed=1), synthetic(60, seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert a.counts() == {"non_person": 30, "person": 30}
    assert a.x.shape == (60, 96, 96, 3)
    # not trivially separable by colour statistics: class means are close
    means = [a.x[a.y == k].mean() for k in (0, 1)]
    assert abs(means[0] - means[1]) < 20
    assert synthetic(4, size=48, channels=1).x.shape == (4, 48, 48, 1)


def _good(tmp, name, mode, fmt, **save):
    arr = np.random.default_rng(len(name)).integers(0, 255, {"L": (30, 20), "RGB": (30, 20, 3),
                                                             "RGBA": (30, 20, 4)}[mode], dtype=np.uint8)
    path = tmp / name
    Image.fromarray(arr, mode).save(path, fmt, **save)
    return path


def _sixteen_bit(tmp, name):
    path = tmp / name
    Image.fromarray((np.arange(600, dtype=np.uint16).reshape(30, 20) * 100)).save(path)
    return path


def _huge(tmp, name):
    """A PNG that says 10000 x 10000 (100 Mpx) but is a few hundred KB on disk."""
    path = tmp / name
    Image.new("L", (10000, 10000)).save(path, optimize=False)
    return path


def _written(tmp, name, content: bytes):
    (tmp / name).write_bytes(content)
    return tmp / name


def _cut(tmp, name):
    good = _good(tmp, "whole.jpg", "RGB", "JPEG").read_bytes()
    (tmp / "whole.jpg").unlink()
    (tmp / name).write_bytes(good[: len(good) // 3])
    return tmp / name


# (file maker, loaded?) -- readable formats are decoded, broken ones are skipped and counted
IMAGE_CASES = {
    "png": (lambda t, n: _good(t, n + ".png", "RGB", "PNG"), True),
    "jpeg": (lambda t, n: _good(t, n + ".jpg", "RGB", "JPEG"), True),
    "bmp": (lambda t, n: _good(t, n + ".bmp", "RGB", "BMP"), True),
    "grayscale": (lambda t, n: _good(t, n + ".png", "L", "PNG"), True),
    "rgba": (lambda t, n: _good(t, n + ".png", "RGBA", "PNG"), True),
    "16-bit": (lambda t, n: _sixteen_bit(t, n + ".png"), True),
    "zero-byte": (lambda t, n: _written(t, n + ".jpg", b""), False),
    "truncated": (lambda t, n: _cut(t, n + ".jpg"), False),
    "huge": (lambda t, n: _huge(t, n + ".png"), False),
    "not-an-image": (lambda t, n: _written(t, n + ".jpg", b"hello"), False),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
@pytest.mark.parametrize("channels", [3, 1])
def test_bad_image_matrix(tmp_path, case, channels):
    """Each kind of file beside good ones: decoded at the model's size, or skipped and counted."""
    root = make_vww(tmp_path / "d", n=2, splits=False)
    make, loads = IMAGE_CASES[case]
    path = make(root / "person", "odd")
    data = load_folder(root, 24, channels)
    assert data.x.shape == (4 + loads, 24, 24, channels)
    assert data.skipped == ([] if loads else [str(path)])
    assert data.counts()["person"] == 2 + loads
