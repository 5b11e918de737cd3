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
