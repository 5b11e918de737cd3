"""The report's PNG figures, each drawn only from the report dict (so report.json holds every number)."""
from __future__ import annotations

import io
import math
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display on build machines
import matplotlib.pyplot as plt  # noqa: E402

BIT_COLOURS = {2: "#d62728", 3: "#ff7f0e", 4: "#ff7f0e", 8: "#1f77b4"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves(report: dict) -> bytes | None:
    """Loss and validation accuracy per epoch, one line per phase (float, qat)."""
    history = report["history"]
    if not history:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    for phase, epochs in history.items():
        x = [e["epoch"] for e in epochs]
        ax_loss.plot(x, [e.get("loss") for e in epochs], marker="o", label=phase)
        ax_acc.plot(x, [e.get("val_accuracy") for e in epochs], marker="o", label=f"{phase} val")
        ax_acc.plot(x, [e.get("accuracy") for e in epochs], linestyle="--", label=f"{phase} train")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
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
    """Accuracy against file bytes, one marker per model and data set."""
    points = [p for p in report["accuracy_vs_size"] if p["bytes"]]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    datasets = sorted({p["data"] for p in points})
    markers = "osD^v"
    for i, data in enumerate(datasets):
        sel = [p for p in points if p["data"] == data]
        ax.scatter([p["bytes"] / 1024 for p in sel], [100 * p["accuracy"] for p in sel], marker=markers[i % 5],
                   s=50, label=data)
        for p in sel:
            ax.annotate(p["model"], (p["bytes"] / 1024, 100 * p["accuracy"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="file size (KiB, log scale)", ylabel="top-1 accuracy (%)", title="accuracy against size")
    ax.legend(fontsize=7)
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
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=11)
    ax.set_xticks(range(n), c["labels"])
    ax.set_yticks(range(n), c["labels"])
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({c['runtime']})")
    return _png(fig)


FIGURES: dict[str, Callable[[dict], bytes | None]] = {
    "curves": curves, "weights": weights, "bits": bits_and_bytes, "accuracy_size": accuracy_vs_size,
    "confusion": confusion,
}
