"""tinyq data pack and --data SHARDS: the pack's contents, the stream's determinism, training from it, damage."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyq.cli import main
from tinyq.contract import InputContract
from tinyq.data.folder import load_folder
from tinyq.data.shards import load_shard_splits, read_manifest, verify

from conftest import RES


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pack(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "flat"
    r = _invoke("data", "pack", folders / "labelled", "--out", out, "--size", RES, "--images-per-shard", 16,
                "--workers", 2, "--json")
    assert r.exit_code == 0, r.stderr
    return out, json.loads(r.stdout)


def test_pack_holds_every_image_once_with_its_label(pack, folders):
    out, manifest = pack
    assert manifest == read_manifest(out)
    verify(out)  # every shard's sha256
    source = load_folder(folders / "labelled", RES)
    parts = manifest["splits"]
    assert sum(p["images"] for p in parts.values()) == len(source) and not manifest["skipped"]
    assert set(parts) == {"train", "val", "test"}
    assert {k: sum(p["counts"][k] for p in parts.values()) for k in ("person", "non_person")} == source.counts()
    assert all(len(p["shards"]) == -(-p["images"] // 16) for p in parts.values())
    sets = load_shard_splits(out, RES, 3)
    train = sets["train"]
    assert len(train) == parts["train"]["images"] and train.counts() == parts["train"]["counts"]
    assert len(sets["val"]) + len(sets["test"]) + len(train) == len(source)
    # the folder's images, re-encoded once at this size: the same pictures, JPEG's rounding apart
    streamed = train.load()
    for x, y in zip(streamed.x[:8], streamed.y[:8]):
        diff = np.abs(source.x.astype(int) - x.astype(int)).reshape(len(source), -1).mean(axis=1)
        assert diff.min() < 10 < np.partition(diff, 1)[1] and source.y[diff.argmin()] == y
    limited = load_shard_splits(out, RES, 3, limit=10)["train"]
    assert len(limited) == 10 and sum(limited.counts().values()) == 10  # --limit: the counts of what is read
    assert limited.counts() == {k: int((limited.load().y == i).sum()) for i, k in enumerate(("non_person", "person"))}
    first = [train.load().y[:16] for _ in range(2)]
    assert np.array_equal(*first) and 0 < first[0].sum() < 16  # one order; shards mix both classes


def test_stream_is_seeded_per_epoch(pack):
    out, _ = pack
    train = load_shard_splits(out, RES, 3)["train"]
    contract = InputContract(RES)
    steps = -(-len(train) // 8)

    def epochs(first, seed=3):
        return [b for b, _ in train.training_batches(contract, 8, seed, 3, first).as_numpy_iterator()]

    whole, resumed = epochs(0), epochs(1)
    assert len(whole) == 3 * steps and len(resumed) == 2 * steps
    assert all(np.array_equal(a, b) for a, b in zip(whole[steps:], resumed))  # --resume sees the same batches
    assert not np.array_equal(whole[0], whole[steps])  # each epoch its own order and augmentation
    assert not np.array_equal(whole[0], epochs(0, seed=4)[0])


@pytest.mark.slow
def test_quantize_and_check_from_a_pack(pack, float_model, tmp_path):
    out, manifest = pack
    run = tmp_path / "run"
    r = _invoke("quantize", float_model, "--data", out, "--bits", 4, "--epochs", 1, "--batch", 16, "--out", run)
    assert r.exit_code == 0, r.stderr
    assert f"train: {manifest['splits']['train']['images']} images" in r.stderr and "streamed from the pack" in r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_n"] == manifest["splits"]["test"]["images"]
    r = _invoke("check", run / "model.tflite", "--data", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n"] == manifest["splits"]["test"]["images"]


def test_damaged_or_mismatched_packs_are_one_line_errors(pack, float_model, folders, tmp_path):
    import shutil

    out, manifest = pack
    r = _invoke("data", "pack", folders / "labelled", "--out", out)
    assert r.exit_code == 1 and "is not an empty folder" in r.stderr
    r = _invoke("quantize", float_model, "--data", out, "--unlabeled", "--out", tmp_path / "u")
    assert r.exit_code == 1 and "drop --unlabeled" in r.stderr and not (tmp_path / "u").exists()
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shard = cut / manifest["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    r = _invoke("quantize", float_model, "--data", cut, "--out", tmp_path / "c")
    assert r.exit_code == 1 and "the pack is damaged" in r.stderr and not (tmp_path / "c").exists()
    small = tmp_path / "small"
    assert _invoke("data", "pack", folders / "labelled", "--out", small, "--size", 16).exit_code == 0
    r = _invoke("quantize", float_model, "--data", small, "--epochs", 1, "--out", tmp_path / "s")
    assert r.exit_code == 1 and f"pack again with --size {RES}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (small / "manifest.json").write_text("{not json")
    r = _invoke("quantize", float_model, "--data", small, "--out", tmp_path / "m")
    assert r.exit_code == 1 and "manifest.json cannot be read" in r.stderr and not (tmp_path / "m").exists()
