"""tinyq data vww: Visual Wake Words labels, area rule and splits from a small COCO-format download made here."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tinyq.cli import main
from tinyq.data.folder import layout, load_folder
from tinyq.data.vww import in_val

# image id: (width, height, [(category, area, iscrowd)], what the standard rule makes it)
TRAIN = {
    1: (200, 100, [(1, 100.0, 0)], "non_person"),  # exactly 0.5%: the rule is strictly more
    2: (200, 100, [(1, 100.5, 0)], "person"),
    3: (160, 120, [(18, 9000.0, 0)], "non_person"),  # a large dog, no person
    4: (160, 120, [], "non_person"),
    5: (160, 120, [(1, 10.0, 0), (1, 5000.0, 0)], "person"),  # a small and a large person
    6: (160, 120, [(1, 4000.0, 1)], "person"),  # a crowd annotation counts, as in the standard set
    7: (160, 120, [(1, 4000.0, 0)], "missing"),  # listed, its file absent
    8: (160, 120, [], "broken"),  # its file not an image
}
for i in range(9, 41):  # enough images for a val/ share
    TRAIN[i] = (64, 48, [(1, 1000.0, 0)] if i % 2 else [], "person" if i % 2 else "non_person")
VAL = {101: (200, 100, [(1, 5000.0, 0)], "person"), 102: (200, 100, [], "non_person"),
       103: (200, 100, [(1, 50.0, 0)], "non_person"), 104: (120, 160, [(1, 300.0, 0)], "person")}


def _coco(root, split, images, year=2017):
    folder = root / f"{split}{year}"
    folder.mkdir(parents=True)
    anns, imgs = [], []
    rng = np.random.default_rng(0)
    for image_id, (w, h, objects, what) in images.items():
        name = f"COCO_{split}_{image_id:012d}.jpg"
        imgs.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for category, area, crowd in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category, "area": area,
                         "iscrowd": crowd, "bbox": [0, 0, 10, 10], "segmentation": [[0, 0, 10, 0, 10, 10]]})
        if what == "broken":
            (folder / name).write_bytes(b"not a jpeg at all")
        elif what != "missing":
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps({
        "images": imgs, "annotations": anns,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}]}))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    _coco(root, "train", TRAIN)
    _coco(root, "val", VAL)
    return root


def _run(*args):
    return CliRunner().invoke(main, ["data", "vww", *map(str, args)], catch_exceptions=False)


def _on_disk(out):
    return {int(p.stem): (p.parts[-3], p.parts[-2]) for p in out.glob("*/*/*.jpg")}


def test_labels_area_rule_and_splits(coco, tmp_path):
    out = tmp_path / "vww"
    r = _run("--coco", coco, "--out", out, "--year", 2017, "--size", 32, "--val-fraction", 0.25, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    expected = {}
    for image_id, (_, _, _, what) in TRAIN.items():
        if what in ("person", "non_person"):
            expected[image_id] = ("val" if in_val(image_id, 0.25) else "train", what)
    expected.update({image_id: ("test", what) for image_id, (_, _, _, what) in VAL.items()})
    assert _on_disk(out) == expected
    assert {split for split, _ in expected.values()} == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        for label in ("person", "non_person"):
            assert summary["counts"][split][label] == sum(1 for s, w in expected.values() if (s, w) == (split, label))
    assert summary["written"] == len(expected) and summary["existing"] == 0
    assert sorted(s["image"].rsplit("_", 1)[1] for s in summary["skipped"]) == ["000000000007.jpg", "000000000008.jpg"]
    with Image.open(next(out.glob("test/person/*.jpg"))) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert set(layout(out)) == {"train", "val", "test"}
    test = load_folder(out / "test", 32)
    assert len(test) == 4 and test.counts() == {"non_person": 2, "person": 2}
    assert json.loads((out / "vww.json").read_text())["counts"] == summary["counts"]

    # run again: everything is there, nothing written; a file left by a killed build is cleared
    (out / "train" / "person" / "000000000099.jpg.tmp-123").write_bytes(b"half")
    again = json.loads(_run("--coco", coco, "--out", out, "--year", 2017, "--size", 32, "--val-fraction", 0.25,
                            "--json").stdout)
    assert again["written"] == 0 and again["existing"] == len(expected) and again["counts"] == summary["counts"]
    assert not list(out.glob("*/*/*.tmp-*"))


def test_minival_ids_are_the_test_split(coco, tmp_path):
    ids = tmp_path / "minival.txt"
    ids.write_text("# minival\n2\n101\n\n103\n")
    out = tmp_path / "vww"
    r = _run("--coco", coco, "--out", out, "--year", 2017, "--size", 16, "--minival", ids, "--val-fraction", 0,
             "--quiet")
    assert r.exit_code == 0, r.stderr
    on_disk = _on_disk(out)
    assert {i for i, (split, _) in on_disk.items() if split == "test"} == {2, 101, 103}
    assert on_disk[2] == ("test", "person") and on_disk[103] == ("test", "non_person")
    assert on_disk[104] == ("train", "person") and not any(split == "val" for split, _ in on_disk.values())
    assert "person" in r.stdout.splitlines()[0] and "skipped" in r.stdout


@pytest.mark.parametrize("args, says", [
    (["--year", 2014], "no annotations/instances_train2014.json"),
    (["--min-area", 1.5], "--min-area is a fraction"),
    (["--size", 4], "--size must lie in 8..1024"),
    (["--minival", "MISSING"], "cannot be read"),
    (["--minival", "BAD"], "line 2: 'x12' is not an image id"),
])
def test_bad_input_is_one_line(coco, tmp_path, args, says):
    (tmp_path / "BAD").write_text("1\nx12\n")
    args = [str(tmp_path / a) if a in ("MISSING", "BAD") else a for a in args]
    out = tmp_path / "vww"
    year = [] if "--year" in args else ["--year", 2017]
    r = _run("--coco", coco, "--out", out, *year, *args)
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
