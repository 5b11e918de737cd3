"""The embedded default data: seeded, procedurally drawn person / no-person scenes.

No download, 2,000 images in a few seconds. A *person* is an articulated figure (head,
torso, two-segment arms and legs at sampled joint angles; skin, shirt and trouser colours;
from half the frame's height to more than all of it, partly cut off at the edges). Every
image, person or not, gets the same kind of background: a colour gradient, a noise texture
and clutter (boxes, discs, poles, branches). Negatives additionally get loose body-like
parts (discs, limb-like bars, torso-like blocks) that are not arranged as a figure (most
negatives; some positives carry them too), so the task is about the arrangement, not the
presence of a colour or shape.

It is synthetic: a model trained on it will not detect real people. Use ``--data DIR``.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tinyq.data.folder import ImageSet

SKIN = [(255, 224, 189), (234, 192, 134), (198, 134, 66), (141, 85, 36), (92, 51, 23), (255, 205, 148)]


def _colour(rng, lo=0, hi=256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _background(rng, size: int) -> Image.Image:
    c0, c1 = np.array(_colour(rng)), np.array(_colour(rng))
    t = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
    grad = c0 * (1 - t) + c1 * t
    cells = int(rng.integers(3, 12))
    noise = rng.normal(0, rng.uniform(5, 40), (cells, cells, 3))
    noise = np.asarray(Image.fromarray(noise.astype(np.float32).mean(axis=2)).resize((size, size), Image.BILINEAR))
    img = np.clip(grad + noise[..., None] + rng.normal(0, 6, (size, size, 3)), 0, 255)
    return Image.fromarray(img.astype(np.uint8))


def _clutter(draw: ImageDraw.ImageDraw, rng, size: int, n: int) -> None:
    for _ in range(n):
        kind = rng.integers(4)
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 10, size // 2, 2)
        col = _colour(rng)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 2:  # pole / tree trunk: a tall thin bar, the shape a torso or leg might take
            draw.line([(x0, y0), (x0 + rng.integers(-5, 6), y0 + h * 2)], fill=col, width=int(rng.integers(2, 8)))
        else:  # branches
            px, py = x0, y0
            for _ in range(int(rng.integers(2, 5))):
                nx, ny = px + rng.integers(-size // 4, size // 4), py + rng.integers(-size // 4, size // 4)
                draw.line([(px, py), (nx, ny)], fill=col, width=int(rng.integers(1, 5)))
                px, py = nx, ny


def _limb(draw, start, angle_deg, length, width, col):
    a = math.radians(angle_deg)
    end = (start[0] + length * math.sin(a), start[1] + length * math.cos(a))
    draw.line([start, end], fill=col, width=max(1, int(width)))
    r = width / 2
    draw.ellipse([end[0] - r, end[1] - r, end[0] + r, end[1] + r], fill=col)
    return end


def _person(draw: ImageDraw.ImageDraw, rng, size: int) -> None:
    height = size * rng.uniform(0.5, 1.1)
    cx = rng.uniform(0.1, 0.9) * size
    top = rng.uniform(-0.15, 1.0 - min(height / size, 0.9)) * size
    unit = height / 8.0  # classic figure proportions: 8 heads tall
    skin, shirt, trousers = SKIN[rng.integers(len(SKIN))], _colour(rng), _colour(rng, 0, 180)
    lean = rng.uniform(-12, 12)
    head_c = (cx, top + unit * 0.55)
    neck = (cx + unit * 0.1 * math.sin(math.radians(lean)), top + unit * 1.1)
    hip = (neck[0] + 3 * unit * math.sin(math.radians(lean)), neck[1] + 3 * unit)
    half_shoulder, half_hip = unit * rng.uniform(0.8, 1.05), unit * rng.uniform(0.55, 0.8)
    limb_w = unit * rng.uniform(0.45, 0.65)
    leg_w = unit * rng.uniform(0.55, 0.8)
    # legs first, so the torso covers the hip joints
    stance = rng.choice(["stand", "walk", "wide", "sit"])
    for side in (-1, 1):
        upper = {"stand": 4, "walk": 25, "wide": 18, "sit": 75}[stance] * side * (1 if stance != "walk" else rng.choice([-1, 1]))
        upper += rng.uniform(-8, 8)
        knee = _limb(draw, (hip[0] + side * half_hip * 0.6, hip[1]), upper, unit * 2.0, leg_w, trousers)
        lower = (upper if stance != "sit" else -side * 5) + rng.uniform(-15, 15)
        _limb(draw, knee, lower, unit * 2.0, leg_w * 0.9, trousers)
    torso = [(neck[0] - half_shoulder, neck[1]), (neck[0] + half_shoulder, neck[1]),
             (hip[0] + half_hip, hip[1]), (hip[0] - half_hip, hip[1])]
    draw.polygon(torso, fill=shirt)
    for side in (-1, 1):
        shoulder = (neck[0] + side * half_shoulder * 0.9, neck[1] + limb_w * 0.4)
        upper = side * rng.uniform(5, 160)
        elbow = _limb(draw, shoulder, upper, unit * 1.5, limb_w, shirt)
        hand = _limb(draw, elbow, upper + side * rng.uniform(-20, 90), unit * 1.3, limb_w * 0.85, skin)
        draw.ellipse([hand[0] - limb_w * 0.5, hand[1] - limb_w * 0.5, hand[0] + limb_w * 0.5, hand[1] + limb_w * 0.5], fill=skin)
    draw.line([neck, (neck[0], neck[1] - unit * 0.3)], fill=skin, width=max(1, int(limb_w * 0.8)))
    hr = unit * rng.uniform(0.45, 0.55)
    draw.ellipse([head_c[0] - hr * 0.85, head_c[1] - hr, head_c[0] + hr * 0.85, head_c[1] + hr], fill=skin)
    if rng.random() < 0.7:  # hair
        draw.chord([head_c[0] - hr * 0.9, head_c[1] - hr * 1.05, head_c[0] + hr * 0.9, head_c[1] + hr * 0.6],
                   180, 360, fill=_colour(rng, 0, 120))


def _decoys(draw: ImageDraw.ImageDraw, rng, size: int) -> None:
    """Body-like parts scattered with no figure's arrangement."""
    for _ in range(int(rng.integers(1, 4))):
        unit = size * rng.uniform(0.04, 0.12)
        x, y = rng.uniform(0, size, 2)
        kind = rng.integers(3)
        if kind == 0:
            col = SKIN[rng.integers(len(SKIN))]
            draw.ellipse([x - unit * 0.45, y - unit * 0.5, x + unit * 0.45, y + unit * 0.5], fill=col)
        elif kind == 1:
            _limb(draw, (x, y), rng.uniform(0, 360), unit * rng.uniform(1.5, 4), unit * 0.55, _colour(rng))
        else:
            w = unit * rng.uniform(1.2, 2.2)
            draw.polygon([(x - w, y), (x + w, y), (x + w * 0.7, y + unit * 3), (x - w * 0.7, y + unit * 3)],
                         fill=_colour(rng))


def make_image(rng: np.random.Generator, person: bool, size: int = 96) -> Image.Image:
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, size, int(rng.integers(2, 7)))
    if person:
        _person(draw, rng, size)
        if rng.random() < 0.3:
            _person(draw, rng, size)
        if rng.random() < 0.3:
            _decoys(draw, rng, size)
    elif rng.random() < 0.7:
        _decoys(draw, rng, size)
    if rng.random() < 0.5:  # occluders in front, for both classes
        _clutter(draw, rng, size, int(rng.integers(1, 3)))
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img


def synthetic(n: int = 2000, size: int = 96, channels: int = 3, seed: int = 0) -> ImageSet:
    """``n`` images, half person, drawn from ``seed``; RGB or grayscale at ``size``."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, np.int32)
    y[: n // 2] = 1
    rng.shuffle(y)
    mode = "RGB" if channels == 3 else "L"
    x = np.stack([np.asarray(make_image(rng, bool(label), size).convert(mode), np.uint8).reshape(size, size, channels)
                  for label in y])
    return ImageSet(x, y, [], source=f"synthetic (seed {seed})")


def synthetic_splits(n: int = 2000, size: int = 96, channels: int = 3, seed: int = 0) -> dict[str, ImageSet]:
    """train (80%), val and test (10% each), each drawn from its own seed."""
    n_eval = max(n // 10, 2)
    return {"train": synthetic(n - 2 * n_eval, size, channels, seed),
            "val": synthetic(n_eval, size, channels, seed + 1_000_003),
            "test": synthetic(n_eval, size, channels, seed + 2_000_003)}
