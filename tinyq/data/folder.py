"""Image folders in the Visual Wake Words layout.

``ROOT/{person,non_person}/*`` or ``ROOT/{train,val,test}/{person,non_person}/*``. Labels
follow the MLPerf Tiny reference: 0 = non_person, 1 = person. Any image Pillow reads, any
size, is converted to RGB or grayscale and resized to the model's resolution. Unreadable
files are skipped and counted, never fatal.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tinyq.errors import TinyqError

LABELS = ("non_person", "person")
SPLITS = ("train", "val", "test")
# Pillow refuses images above ~179 Mpx as a decompression bomb; a data folder is trusted,
# but a 2 GB scan is still skipped rather than exhausting memory.
_MAX_PIXELS = 64_000_000


@dataclass
class ImageSet:
    """Decoded images ``x`` (N, H, W, C) uint8 and labels ``y`` (N,) int32."""

    x: np.ndarray
    y: np.ndarray
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        return {name: int((self.y == i).sum()) for i, name in enumerate(LABELS)}

    # what training reads of its split; a pack's streamed split (tinyq.data.shards.ShardSet) has the same
    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` images of a seeded permutation (calibration)."""
        return self.x[np.random.default_rng(seed).permutation(len(self.x))[:n]]

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` images."""
        return self.x[:n]

    def representative(self) -> np.ndarray:
        """Images for the converter's calibration: all of them (the run keeps a seeded 200)."""
        return self.x

    def training_batches(self, contract, batch: int, seed: int, epochs: int, initial_epoch: int = 0):
        """Shuffled, augmented batches (:func:`tinyq.data.pipeline.training_batches`)."""
        from tinyq.data.pipeline import training_batches

        return training_batches(self.x, self.y, contract, batch, seed, epochs, initial_epoch)

    def skipped_note(self, shown: int = 3) -> str:
        """``"N unreadable skipped (a, b, c, ...)"``, naming the first files so a user can find them; "" if none."""
        if not self.skipped:
            return ""
        more = ", ..." if len(self.skipped) > shown else ""
        return f"{len(self.skipped)} unreadable skipped ({', '.join(self.skipped[:shown])}{more})"


def _list_class_dirs(root: Path) -> list[tuple[Path, int]] | None:
    dirs = [(root / name, i) for i, name in enumerate(LABELS)]
    return dirs if any(d.is_dir() for d, _ in dirs) else None


def layout(root: str | Path) -> dict[str, Path]:
    """The split folders under ``root``: ``{"train": ..., "val": ..., "test": ...}`` or ``{"all": root}``."""
    root = Path(root)
    if not root.exists():
        raise TinyqError(f"data folder {str(root)!r} does not exist; pass --data with a folder "
                         "holding person/ and non_person/ (optionally under train/ val/ test/)")
    if not root.is_dir():
        raise TinyqError(f"data path {str(root)!r} is not a folder; pass a folder holding person/ and non_person/")
    splits = {s: root / s for s in SPLITS if _list_class_dirs(root / s)}
    if splits:
        return splits
    if _list_class_dirs(root):
        return {"all": root}
    raise TinyqError(f"data folder {str(root)!r} has no person/ or non_person/ folder; "
                     "use the Visual Wake Words layout: DIR/person/*.jpg and DIR/non_person/*.jpg")


def load_image(path: Path, size: int, channels: int) -> np.ndarray | None:
    """One image decoded to ``(size, size, channels)`` uint8, or None when it cannot be read."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > _MAX_PIXELS:
                return None
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: keep the top 8 bits
                a = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if a.max() > 255 else 255.0
                im = Image.fromarray(np.clip(a / peak * 255.0, 0, 255).astype(np.uint8))
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return arr.reshape(size, size, channels)


def jpeg_at(path: Path, size: int, channels: int) -> bytes | None:
    """One image as :func:`load_image` reads it, encoded as JPEG (quality 95); None when it cannot be read."""
    pixels = load_image(path, size, channels)
    if pixels is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, "RGB" if channels == 3 else "L").save(
        buf, "JPEG", quality=95)
    return buf.getvalue()


def load_folder(root: str | Path, size: int, channels: int = 3, limit: int | None = None,
                seed: int = 0) -> ImageSet:
    """Decode every image under ``root/{person,non_person}``; ``limit`` keeps a seeded sample."""
    root = Path(root)
    class_dirs = _list_class_dirs(root)
    if class_dirs is None:
        raise TinyqError(f"{str(root)!r} has no person/ or non_person/ folder")
    files: list[tuple[Path, int]] = []
    for d, label in class_dirs:
        if d.is_dir():
            files += [(p, label) for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if limit is not None and len(files) > limit:
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(files), size=limit, replace=False))
        files = [files[i] for i in keep]
    xs, ys, skipped = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings on odd files: counted below instead
        for path, label in files:
            arr = load_image(path, size, channels)
            if arr is None:
                skipped.append(str(path))
            else:
                xs.append(arr)
                ys.append(label)
    if not xs:
        raise TinyqError(f"no readable images in {str(root)!r} ({len(skipped)} unreadable); "
                         "add .jpg/.png images to person/ and non_person/")
    x = np.stack(xs)
    y = np.asarray(ys, np.int32)
    return ImageSet(x, y, skipped, str(root))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def load_images(root: str | Path, size: int, channels: int = 3, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Every image under ``root`` (any folder layout), unlabelled (y = 0)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None and len(files) > limit:
        files = [files[i] for i in sorted(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))]
    xs, skipped = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            arr = load_image(path, size, channels)
            (skipped.append(str(path)) if arr is None else xs.append(arr))
    if not xs:
        raise TinyqError(f"no readable images under {str(root)!r}; add .jpg/.png images")
    return ImageSet(np.stack(xs), np.zeros(len(xs), np.int32), skipped, str(root))


def require_both_classes(data: ImageSet, what: str) -> None:
    missing = [name for name, n in data.counts().items() if n == 0]
    if missing:
        raise TinyqError(f"{what} has no {missing[0]} images ({data.source}); a person detector "
                         "needs both person/ and non_person/ examples")


def split(data: ImageSet, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, ImageSet]:
    """A seeded, stratified train/val/test split of one folder."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for label in range(len(LABELS)):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        n_train = int(round(len(idx) * fractions[0]))
        n_val = int(round(len(idx) * fractions[1]))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    out = {}
    for s, chunks in parts.items():
        idx = np.sort(np.concatenate(chunks))
        out[s] = ImageSet(data.x[idx], data.y[idx], data.skipped if s == "train" else [], data.source)
    return out


def load_splits(root: str | Path, size: int, channels: int = 3, seed: int = 0,
                limit: int | None = None) -> dict[str, ImageSet]:
    """train/val/test from a data folder, split by seed when it has no split folders."""
    found = layout(root)
    if "all" in found:
        out = split(load_folder(found["all"], size, channels, limit, seed), seed=seed)
    else:
        out = {s: load_folder(p, size, channels, limit, seed) for s, p in found.items()}
        if "train" not in out:
            raise TinyqError(f"data folder {str(root)!r} has split folders but no train/; add train/person and train/non_person")
        if "val" not in out:  # carve validation from train so model selection never sees test
            parts = split(out["train"], fractions=(0.9, 0.1, 0.0), seed=seed)
            out["train"], out["val"] = parts["train"], parts["val"]
    require_both_classes(out["train"], "the training data")
    return out
