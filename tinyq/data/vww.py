"""Visual Wake Words from a local COCO download: the standard labels, each image resized once.

An image is ``person`` when one of its person annotations covers more than ``min_area`` of
the image (the annotation's ``area`` over height x width, strictly more; 0.005 in the standard
set), else ``non_person`` -- the rule of Chowdhery et al., "Visual Wake Words Dataset" (2019),
as TensorFlow's ``build_visualwakewords_data`` and the MLPerf Tiny reference apply it.

Splits, in tinyq's folder layout ``OUT/{train,val,test}/{person,non_person}/ID.jpg``:

- without a minival list: COCO's train images go to ``train/`` and COCO's val images to
  ``test/``; ``val/`` (for epoch validation) takes the train images whose id falls in the
  ``val_fraction`` by a fixed hash (``crc32`` of the id), so every run and machine agrees;
- with ``minival`` (a file of image ids, one per line, as the MLPerf Tiny reference uses the
  ``mscoco_minival_ids.txt`` of TensorFlow's object detection): COCO's train and val images are
  pooled, the listed ids go to ``test/`` and the rest to ``train/`` and ``val/`` as above.

Images are converted to RGB and resized to ``size`` x ``size`` (the aspect ratio is not kept,
as in the MLPerf Tiny set), written as JPEG (quality 95) under a temporary name and renamed,
so an interrupted build leaves no partial image and the next build skips what is done.
"""
from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tinyq.data.folder import LABELS, jpeg_at
from tinyq.errors import TinyqError
from tinyq.logs import Log, bar, quiet

YEARS = (2014, 2017)
SUMMARY = "vww.json"


@dataclass(frozen=True)
class VwwJob:
    """What ``tinyq data vww`` builds; validated on construction, before any file is read."""

    coco: str
    out: str
    year: int = 2014
    min_area: float = 0.005
    size: int = 96
    minival: str | None = None
    val_fraction: float = 0.02
    workers: int = 0  # 0: one per core

    def __post_init__(self) -> None:
        if self.year not in YEARS:
            raise TinyqError(f"--year must be 2014 or 2017 (COCO's releases); got {self.year}")
        if not 0.0 <= self.min_area < 1.0:
            raise TinyqError(f"--min-area is a fraction of the image, 0 <= A < 1 (standard: 0.005); got {self.min_area}")
        if not 8 <= self.size <= 1024:
            raise TinyqError(f"--size must lie in 8..1024 pixels; got {self.size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TinyqError(f"--val-fraction must lie in 0..1 (e.g. 0.02); got {self.val_fraction}")
        if self.workers < 0:
            raise TinyqError(f"--workers must be 0 (one per core) or more; got {self.workers}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise TinyqError(f"--out {self.out!r} is a file; give a folder for the images")


@dataclass
class VwwSummary:
    out: str
    counts: dict[str, dict[str, int]]  # split -> label -> images
    written: int = 0
    existing: int = 0  # already there from an earlier build (resumed)
    skipped: list[dict] = field(default_factory=list)  # {"image", "why"}
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out": self.out, "counts": self.counts, "written": self.written, "existing": self.existing,
                "skipped": self.skipped, "settings": self.settings}

    def table(self) -> str:
        lines = [f"{'split':<7}{'person':>10}{'non_person':>12}{'total':>10}"]
        for split, c in self.counts.items():
            lines.append(f"{split:<7}{c['person']:>10,}{c['non_person']:>12,}{sum(c.values()):>10,}")
        lines.append(f"{self.written:,} images written, {self.existing:,} already there, {len(self.skipped):,} skipped"
                     + (f" (first: {self.skipped[0]['image']}: {self.skipped[0]['why']})" if self.skipped else ""))
        return "\n".join(lines)


def coco_files(coco: str | Path, year: int) -> dict[str, tuple[Path, Path]]:
    """COCO's splits under ``coco`` for ``year``: ``{"train": (annotations, images), "val": ...}``,
    those present; an error naming the expected layout if none is."""
    root = Path(coco)
    if not root.is_dir():
        raise TinyqError(f"--coco {str(coco)!r} is not a folder; give the COCO download holding annotations/ "
                         f"and train{year}/ val{year}/")
    found = {}
    for split in ("train", "val"):
        ann, images = root / "annotations" / f"instances_{split}{year}.json", root / f"{split}{year}"
        if ann.is_file():
            if not images.is_dir():
                raise TinyqError(f"{ann} is there but not its images {images}/: unpack {split}{year}.zip into {root}")
            found[split] = (ann, images)
    if not found:
        raise TinyqError(f"--coco {str(coco)!r} has no annotations/instances_train{year}.json or "
                         f"instances_val{year}.json: give the folder holding COCO's annotations/ and images "
                         f"(cocodataset.org, {year}), or pass --year {2017 if year == 2014 else 2014}")
    return found


def read_minival(path: str | Path) -> set[int]:
    """Image ids, one per line (blank lines and ``#`` comments allowed)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise TinyqError(f"--minival {str(path)!r} cannot be read ({e.strerror or e}): give a file of COCO image ids, "
                         "one per line") from None
    ids = set()
    for n, line in enumerate(lines, 1):
        text = line.split("#")[0].strip()
        if not text:
            continue
        if not text.isdigit():
            raise TinyqError(f"--minival {str(path)!r} line {n}: {text[:40]!r} is not an image id; one id per line")
        ids.add(int(text))
    if not ids:
        raise TinyqError(f"--minival {str(path)!r} lists no image ids")
    return ids


def person_labels(annotations: Path, min_area: float) -> dict[int, tuple[str, int]]:
    """``{image id: (file name, label)}`` by the module's rule, with pycocotools."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its timings
            coco = COCO(str(annotations))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise TinyqError(f"{annotations} is not a COCO instances file ({type(e).__name__}: {str(e)[:80]})") from None
    person = coco.getCatIds(catNms=["person"])
    if not person:
        raise TinyqError(f"{annotations} has no 'person' category: give COCO's instances_*.json")
    labels = {}
    for image in coco.loadImgs(coco.getImgIds()):
        area = float(image["height"]) * float(image["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=person, iscrowd=None))
        big = area > 0 and any(float(a["area"]) / area > min_area for a in anns)
        labels[int(image["id"])] = (image["file_name"], int(big))
    return labels


def in_val(image_id: int, fraction: float) -> bool:
    """Whether a train image goes to ``val/``: a fixed hash of its id (the module docstring)."""
    return zlib.crc32(str(image_id).encode()) % 100_000 < fraction * 100_000


def _resize_one(task: tuple[str, str, int]) -> str | None:
    """Write one image (source, destination, size) as training reads images; None, or why it could not be."""
    src, dst, size = task
    data = jpeg_at(Path(src), size, 3)
    if data is None:
        return "not an image Pillow can read" if Path(src).exists() else "missing"
    tmp = Path(f"{dst}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dst)
    return None


def build_vww(job: VwwJob, log: Log = quiet) -> VwwSummary:
    """Build the Visual Wake Words folders of ``job`` (module docstring); resumes what is there."""
    from tinyq.runfolder import write_json

    splits = coco_files(job.coco, job.year)
    minival = read_minival(job.minival) if job.minival else None
    out = Path(job.out)
    plan: list[tuple[str, str, int, str]] = []  # source, destination, label, split
    for coco_split, (ann, images) in splits.items():
        log(f"data: reading {ann} ...")
        for image_id, (name, label) in sorted(person_labels(ann, job.min_area).items()):
            if minival is not None:
                split = "test" if image_id in minival else "val" if in_val(image_id, job.val_fraction) else "train"
            else:
                split = "test" if coco_split == "val" else "val" if in_val(image_id, job.val_fraction) else "train"
            dst = out / split / LABELS[label] / f"{image_id:012d}.jpg"
            plan.append((str(images / name), str(dst), label, split))
    counts = {s: {"person": 0, "non_person": 0} for s in ("train", "val", "test")}
    summary = VwwSummary(str(out), counts, settings={"year": job.year, "min_area": job.min_area, "size": job.size,
                                                    "minival": job.minival, "val_fraction": job.val_fraction,
                                                    "coco_splits": sorted(splits)})
    todo = []
    for src, dst, label, split in plan:
        counts[split][LABELS[label]] += 1
        if Path(dst).exists():
            summary.existing += 1
        else:
            todo.append((src, dst, job.size))
    for split in counts:
        for name in LABELS:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for left in folder.glob("*.jpg.tmp-*"):  # an interrupted build's image in the making
                left.unlink()
    workers = job.workers or os.cpu_count() or 1
    log(f"data: {len(plan):,} images ({summary.existing:,} already there): resizing {len(todo):,} to "
        f"{job.size}x{job.size} on {workers} worker{'s' if workers > 1 else ''} ...")
    if todo:
        with bar(len(todo), "resize", "img") as progress, ProcessPoolExecutor(workers) as pool:
            for (src, dst, _), why in zip(todo, pool.map(_resize_one, todo, chunksize=64)):
                progress.update(1)
                if why is None:
                    summary.written += 1
                else:
                    summary.skipped.append({"image": src, "why": why})
                    split, name = Path(dst).parts[-3], Path(dst).parts[-2]
                    counts[split][name] -= 1
    write_json(out / SUMMARY, summary.to_dict())
    return summary
