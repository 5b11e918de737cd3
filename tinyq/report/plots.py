"""The report's PNG figures, each drawn only from the report dict (so report.json holds every number)."""
from __future__ import annotations

import io
import math
from typing import Callable

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on build machines
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

BIT_COLOURS = {2: "#d62728", 3: "#ff7f0e", 4: "#ff7f0e", 8: "#1f77b4"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _percent_axis(ax, values: list[float], reference: float | None = None) -> None:
    """A y range in percent that holds every value and the reference, at least 10 points tall, so a
    difference of two images does not fill the plot."""
    seen = [v for v in values if v is not None] + ([reference] if reference is not None else [])
    if not seen:
        return
    lo, hi = min(seen), max(seen)
    pad = max(0.0, 10.0 - (hi - lo)) / 2 + 1.0
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad) + 0.5)


def curves(report: dict) -> bytes | None:
    """Loss and validation accuracy per epoch on one timeline: the float epochs, then QAT's after them."""
    history = report["history"]
    if not history:
        return None
    measure = report["metrics"].get("measure", "accuracy")
    name = "agreement with the float model" if measure == "agreement" else "accuracy"
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    offset, shown = 0, []
    for phase, epochs in history.items():
        x = [offset + e["epoch"] for e in epochs]
        val = [None if e.get(f"val_{measure}") is None else 100 * e[f"val_{measure}"] for e in epochs]
        train = [None if e.get(measure) is None else 100 * e[measure] for e in epochs]
        ax_loss.plot(x, [e.get("loss") for e in epochs], marker="o", label=phase)
        ax_acc.plot(x, val, marker="o", label=f"{phase}, validation")
        ax_acc.plot(x, train, marker=".", linestyle="--", label=f"{phase}, training")
        shown += val + train
        if offset:
            for ax in (ax_loss, ax_acc):
                ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=0.8)
        offset = x[-1] if x else offset
    reference = report["metrics"].get("float_val_accuracy") if measure == "accuracy" else None
    if reference is not None:
        ax_acc.axhline(100 * reference, color="black", linewidth=0.8, label="float model, validation")
    _percent_axis(ax_acc, shown, None if reference is None else 100 * reference)
    ax_loss.set(title="loss", xlabel="epoch (all phases)")
    ax_acc.set(title=f"{name} (%)", xlabel="epoch (all phases)")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def weights(report: dict) -> bytes | None:
    """Per quantized layer: latent weights / channel scale, with the grid's levels and clip drawn over."""
    hists = report["histograms"]
    if not hists:
        return None
    cols = 6
    rows = math.ceil(len(hists) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(hists):]:
        ax.axis("off")
    for ax, h in zip(axes.ravel(), hists):
        name = h["layer"]
        edges = h["edges"]
        ax.stairs(h["counts"], edges, fill=True, color=BIT_COLOURS.get(h["bits"], "#2ca02c"), alpha=0.6)
        for level in h["levels"] or []:
            ax.axvline(level, color="black", linewidth=0.8)
        for c in (-h["clip"], h["clip"]):
            ax.axvline(c, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"{name[:28]} ({h['bits']}-bit)", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    fig.suptitle("weights in units of their channel's scale; black: grid levels, dotted: clipping range")
    return _png(fig)


def bits_and_bytes(report: dict) -> bytes:
    """Bytes of each weight tensor in the file, coloured by its bits."""
    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 3.5))
    ax.bar(range(len(layers)), [r["bytes"] for r in layers],
           color=[BIT_COLOURS.get(r["bits"], "#2ca02c") for r in layers])
    ax.set_xticks(range(len(layers)), [f"{r['layer'][:20]} ({r['bits']}b)" for r in layers], rotation=70,
                  fontsize=7, ha="right")
    ax.set(ylabel="bytes in the .tflite", title="weight bytes per layer (red 2-bit, orange 4-bit, blue 8-bit)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def accuracy_vs_size(report: dict) -> bytes | None:
    """Accuracy against file bytes, one marker per model and data set; accuracy against labels where
    there is any, else agreement with the float model (never both on one axis)."""
    points = [p for p in report["accuracy_vs_size"] if p["bytes"]]
    labelled = [p for p in points if p.get("measure", "accuracy") == "accuracy"]
    points = labelled or points
    if not points:
        return None
    name = "top-1 accuracy" if labelled else "agreement with the float model"
    fig, ax = plt.subplots(figsize=(6.5, 4))
    datasets = sorted({p["data"] for p in points})
    markers = "osD^v"
    for i, data in enumerate(datasets):
        sel = [p for p in points if p["data"] == data]
        label = Path(data).name or data if "/" in data else data
        ax.scatter([p["bytes"] / 1024 for p in sel], [100 * p["accuracy"] for p in sel], marker=markers[i % 5],
                   s=60, zorder=3, label=f"{label} ({sel[0]['n']} images)")
        for p in sel:
            ax.annotate(f"{p['model']}: {100 * p['accuracy']:.1f}%", (p["bytes"] / 1024, 100 * p["accuracy"]),
                        fontsize=8, xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    kib = [p["bytes"] / 1024 for p in points]
    ax.set_xlim(min(kib) / 1.6, max(kib) * 2.2)  # room for the labels right of the markers
    _percent_axis(ax, [100 * p["accuracy"] for p in points])
    ax.set(xlabel="file size (KiB, log scale)", ylabel=f"{name} (%)", title=f"{name} against size")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion(report: dict) -> bytes | None:
    c = report["confusion"]
    if not c:
        return None
    m = c["matrix"]
    n = len(m)
    fig, ax = plt.subplots(figsize=(1.6 * n + 1.5, 1.4 * n + 1))
    ax.imshow(m, cmap="Blues")
    top = max(max(row) for row in m) or 1
    for i in range(n):
        for j in range(n):  # white on the dark cells, black on the light ones
            ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=12,
                    color="white" if m[i][j] > 0.6 * top else "black")
    ax.set_xticks(range(n), c["labels"])
    ax.set_yticks(range(n), c["labels"])
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({c['runtime']})")
    return _png(fig)


FIGURES: dict[str, Callable[[dict], bytes | None]] = {
    "curves": curves, "weights": weights, "bits": bits_and_bytes, "accuracy_size": accuracy_vs_size,
    "confusion": confusion,
}
