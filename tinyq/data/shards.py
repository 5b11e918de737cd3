"""TFRecord shards of an image folder, read back as a stream: training never holds the set in memory.

``tinyq data pack DIR --out SHARDS`` writes ``SHARDS/{split}-{k:05d}-of-{n:05d}.tfrecord`` and,
last, ``SHARDS/manifest.json``: the format, image size and channels, and per split the images,
the count per class and each shard's images, bytes and sha256. A folder without the manifest is
not a pack (an interrupted one). Each record is a ``tf.train.Example`` with ``image`` (JPEG of
the image already at ``size`` x ``size``: a source JPEG of that size and mode is kept byte for
byte, anything else resized and encoded once at quality 95) and ``label`` (0 non_person,
1 person). Images are shuffled across shards (seeded), so every shard holds both classes.

``--data SHARDS`` trains from the pack: the train split streams (shard files interleaved,
records decoded in parallel, shuffled in a buffer, prefetched); val and test are read into
memory, as evaluation needs every image. Epoch ``e``'s order and augmentation depend on
``(seed, e)`` alone, as for folders (:func:`tinyq.data.pipeline.training_batches`), so a
resumed run sees the batches an uninterrupted one sees; the order differs from the folder's.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyq.data.folder import LABELS, SPLITS, ImageSet, jpeg_at, layout, split
from tinyq.errors import TinyqError
from tinyq.logs import Log, bar, quiet

MANIFEST = "manifest.json"
FORMAT = "tinyq-shards"
VERSION = 1
SHUFFLE_BUFFER = 4096  # images: the stream's shuffle after shard interleaving


def is_shards(path: str | Path) -> bool:
    """Whether ``path`` is a pack (a folder with a manifest)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: str | Path) -> dict:
    """The pack's manifest, checked: its format and every shard present at its recorded size."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise TinyqError(f"{root / MANIFEST} cannot be read ({type(e).__name__}); pack again with tinyq data pack") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise TinyqError(f"{root / MANIFEST} is not a version {VERSION} tinyq pack; pack again with tinyq data pack")
    try:
        for name, part in manifest["splits"].items():
            if name not in SPLITS:
                raise KeyError(name)
            for shard in part["shards"]:
                path = root / shard["file"]
                if Path(shard["file"]).name != shard["file"] or not path.is_file():
                    raise TinyqError(f"the pack {str(root)!r} lists {shard['file']!r}, which is not there; pack again")
                if path.stat().st_size != shard["bytes"]:
                    raise TinyqError(f"{path} has {path.stat().st_size:,} bytes, the manifest says {shard['bytes']:,}: "
                                     "the pack is damaged; pack again")
        int(manifest["size"]), int(manifest["channels"])
    except (KeyError, TypeError, ValueError) as e:
        raise TinyqError(f"{root / MANIFEST} is damaged ({type(e).__name__}: {e}); pack again") from None
    return manifest


def verify(root: str | Path) -> None:
    """Every shard's sha256 against the manifest (``tinyq data pack --verify``)."""
    root = Path(root)
    for part in read_manifest(root)["splits"].values():
        for shard in part["shards"]:
            if _sha256(root / shard["file"]) != shard["sha256"]:
                raise TinyqError(f"{root / shard['file']} does not match its checksum in the manifest; pack again")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _encode(task: tuple[str, int, int]) -> bytes | None:
    """One image as JPEG bytes at ``size`` (module docstring), or None when it cannot be read."""
    from PIL import Image

    path, size, channels = task
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG" and im.size == (size, size) and im.mode == mode:
                return Path(path).read_bytes()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return jpeg_at(Path(path), size, channels)


def _listing(root: Path, seed: int) -> dict[str, list[tuple[str, int]]]:
    """(image path, label) per split: the folder's own splits, or seeded 80/10/10 ones of a flat folder."""
    found = layout(root)
    out = {}
    for name, folder in found.items():
        items = [(str(p), label) for label, cls in enumerate(LABELS) if (folder / cls).is_dir()
                 for p in sorted((folder / cls).iterdir()) if p.is_file() and not p.name.startswith(".")]
        out[name] = items
    if "all" in out:
        items = out.pop("all")
        parts = split(ImageSet(np.arange(len(items)), np.array([y for _, y in items], np.int32)), seed=seed)
        out = {name: [items[int(i)] for i in part.x] for name, part in parts.items() if len(part)}
    return out


def pack(source: str | Path, out: str | Path, size: int = 96, channels: int = 3, per_shard: int = 2048,
         seed: int = 0, workers: int = 0, log: Log = quiet) -> dict:
    """Pack the image folder ``source`` into shards in ``out`` (module docstring); returns the manifest."""
    from tinyq._tf import tf

    from tinyq.runfolder import write_json

    source, out = Path(source), Path(out)
    if not 8 <= size <= 1024:
        raise TinyqError(f"--size must lie in 8..1024 pixels; got {size}")
    if per_shard < 1:
        raise TinyqError(f"--images-per-shard must be at least 1; got {per_shard}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TinyqError(f"--out {str(out)!r} exists and is not an empty folder; choose another (a pack is written whole)")
    listing = _listing(source, seed)
    if "train" not in listing or not listing["train"]:
        raise TinyqError(f"{str(source)!r} has no training images (train/person, train/non_person or person/, non_person/)")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "size": size, "channels": channels, "source": str(source),
                "seed": seed, "splits": {}, "skipped": []}
    workers = workers or os.cpu_count() or 1
    total = sum(len(v) for v in listing.values())
    log(f"data: packing {total:,} images of {source} at {size}x{size} into {out} ({workers} workers) ...")
    # spawned, not forked: TensorFlow's threads are running in this process
    spawn = multiprocessing.get_context("spawn")
    with bar(total, "pack", "img") as progress, ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        for name in SPLITS:
            items = listing.get(name, [])
            if not items:
                continue
            order = np.random.default_rng(seed).permutation(len(items))
            items = [items[i] for i in order]
            n_shards = -(-len(items) // per_shard)
            part = {"images": 0, "counts": {c: 0 for c in LABELS}, "shards": []}
            for k in range(n_shards):
                chunk = items[k * per_shard:(k + 1) * per_shard]
                file = f"{name}-{k:05d}-of-{n_shards:05d}.tfrecord"
                tmp = out / f".{file}.tmp-{os.getpid()}"
                written = 0
                with tf.io.TFRecordWriter(str(tmp)) as writer:
                    for (path, label), data in zip(chunk, pool.map(_encode, [(p, size, channels) for p, _ in chunk],
                                                                 chunksize=32)):
                        progress.update(1)
                        if data is None:
                            manifest["skipped"].append(path)
                            continue
                        example = tf.train.Example(features=tf.train.Features(feature={
                            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
                        writer.write(example.SerializeToString())
                        part["counts"][LABELS[label]] += 1
                        written += 1
                os.replace(tmp, out / file)
                part["shards"].append({"file": file, "images": written, "bytes": (out / file).stat().st_size,
                                       "sha256": _sha256(out / file)})
                part["images"] += written
            manifest["splits"][name] = part
    write_json(out / MANIFEST, manifest)  # last: a folder without it is not a pack
    return manifest


@dataclass
class ShardSet:
    """One split of a pack: its shard files and counts; streamed, never loaded whole."""

    root: Path
    name: str
    files: list[str]
    n: int
    class_counts: dict[str, int]
    size: int
    channels: int
    limit: int | None = None

    def __len__(self) -> int:
        return self.n if self.limit is None else min(self.n, self.limit)

    def counts(self) -> dict[str, int]:
        """Images per class: the manifest's, or with ``limit`` those of the first ``limit`` records (labels
        read, images not decoded)."""
        if self.limit is None or self.limit >= self.n:
            return dict(self.class_counts)
        from tinyq._tf import tf

        labels = self.records(parse=lambda r: tf.io.parse_single_example(
            r, {"label": tf.io.FixedLenFeature([], tf.int64)})["label"])
        found = np.bincount(np.fromiter(labels.as_numpy_iterator(), np.int64), minlength=len(LABELS))
        return {name: int(found[i]) for i, name in enumerate(LABELS)}

    @property
    def source(self) -> str:
        return str(self.root)

    def records(self, files=None, parse=None):
        """``(image uint8 HWC, label)`` records (or ``parse(record)``), files in order (or ``files``), decoded in
        parallel."""
        from tinyq._tf import tf

        files = tf.data.Dataset.from_tensor_slices(self.files if files is None else files)
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(8, len(self.files)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if self.limit is not None:
            ds = ds.take(self.limit)
        return ds.map(parse or self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _parse(self, record):
        from tinyq._tf import tf

        f = tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string),
                                                "label": tf.io.FixedLenFeature([], tf.int64)})
        image = tf.io.decode_jpeg(f["image"], channels=self.channels)
        image = tf.ensure_shape(image, [self.size, self.size, self.channels])
        return image, tf.cast(f["label"], tf.int32)

    def load(self) -> ImageSet:
        """Every image of the split in memory (val and test, which evaluation reads whole)."""
        xs, ys = [], []
        for x, y in self.records().batch(1024).as_numpy_iterator():
            xs.append(x)
            ys.append(y)
        if not xs:
            return ImageSet(np.zeros((0, self.size, self.size, self.channels), np.uint8), np.zeros(0, np.int32),
                            source=self.source)
        return ImageSet(np.concatenate(xs), np.concatenate(ys), source=self.source)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` images of a seeded shuffle of the stream (calibration, representative pixels)."""
        ds = self.records().shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False).take(n)
        return np.stack([x for x, _ in ds.as_numpy_iterator()])

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` images, files in order."""
        return np.stack([x for x, _ in self.records().take(n).as_numpy_iterator()])

    def representative(self) -> np.ndarray:
        """Images for the converter's calibration: 200 of a seeded shuffle (a stream is not kept whole)."""
        return self.sample(200, 0)

    def training_batches(self, contract, batch: int, seed: int, epochs: int, initial_epoch: int = 0):
        """Shuffled, augmented batches of epochs ``initial_epoch .. epochs - 1``, streamed: each epoch's shard
        files and shuffle buffer drawn from its seed (:func:`tinyq.data.pipeline.epoch_batches`)."""
        from tinyq._tf import tf
        from tinyq.data.pipeline import epoch_batches

        def shuffled(s: int):
            files = tf.random.experimental.stateless_shuffle(tf.constant(self.files), seed=[s, 0])
            return self.records(files).shuffle(SHUFFLE_BUFFER, seed=s, reshuffle_each_iteration=False)

        return epoch_batches(shuffled, contract, batch, seed, epochs, initial_epoch)


def shard_sets(root: str | Path, size: int, channels: int, limit: int | None = None) -> dict[str, ShardSet]:
    """The pack's splits that hold images, checked against the model's input (``size``, ``channels``)."""
    manifest = read_manifest(root)
    if (manifest["size"], manifest["channels"]) != (size, channels):
        raise TinyqError(f"the pack {str(root)!r} holds {manifest['size']}x{manifest['size']}x{manifest['channels']} "
                         f"images; the model takes {size}x{size}x{channels}: pack again with --size {size}"
                         + (" --channels 1" if channels == 1 else ""))
    return {name: ShardSet(Path(root), name, [str(Path(root) / s["file"]) for s in part["shards"]], part["images"],
                           part["counts"], size, channels, limit)
            for name, part in manifest["splits"].items() if part["images"]}


def load_shard_splits(root: str | Path, size: int, channels: int, limit: int | None = None,
                      log: Log = quiet) -> dict:
    """``{"train": ShardSet, "val": ImageSet, "test": ImageSet}`` of a pack, checked against the model's input."""
    sets = shard_sets(root, size, channels, limit)
    if "train" not in sets:
        raise TinyqError(f"the pack {str(root)!r} has no training images")
    if not all(sets["train"].class_counts.get(c) for c in LABELS):
        raise TinyqError(f"the pack {str(root)!r} has training images of one class only; it needs person and non_person")
    out = {"train": sets["train"]}
    log(f"data: train: {len(out['train'])} images {out['train'].counts()}, streamed from the pack")
    for name in ("val", "test"):
        if name in sets:
            out[name] = sets[name].load()
            log(f"data: {name}: {len(out[name])} images {out[name].counts()}")
    if "val" not in out:
        raise TinyqError(f"the pack {str(root)!r} has no val split: pack a folder with val/, or a flat folder "
                         "(tinyq data pack splits it)")
    return out
