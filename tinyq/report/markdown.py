"""``report.md``: the quantization card, tables and the plots, from the report dict."""
from __future__ import annotations


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _card(report: dict) -> list[str]:
    c, s = report["card"], report["settings"]
    how = {None: f"quantization-aware training, method `{c['method']}`", "tinyq": "post-training: tinyq's "
           "per-channel rounding with MSE-searched clipping, no training",
           "converter": "post-training: the TFLite converter's int8 quantization"}[c["ptq"]]
    lines = ["## Quantization card", "",
             f"- how: {how}",
             f"- weights: {c['weight_bits']}-bit requested; bits in the file: "
             f"{', '.join(map(str, c['weight_bits_in_file']))}",
             f"- kept at 8 bits ({', '.join(c['kept_8bit']) or 'none requested'}): "
             f"{', '.join(c['layers_at_8bit']) or 'none'}",
             f"- per-channel scales: {', '.join(c['per_channel']) or 'none'}",
             f"- per-tensor scale: {', '.join(c['per_tensor']) or 'none'}",
             f"- activations: {c['activations']}",
             f"- batch norm: {c['batch_norm']}",
             "- dead channels dropped at folding (outputs unchanged): " + (", ".join(
                 f"{name} {n}" for name, n in c.get("dead_channels_dropped", {}).items()) or "none"),
             f"- float ops in the file: {', '.join(c['float_layers']) or 'none (full integer)'}"]
    check = report["metrics"].get("integer_check")
    if check and "skipped" in check:
        lines.append(f"- file against the Keras model in integer arithmetic: not checked ({check['skipped']})")
    elif check:
        same = round(check["identical_outputs"] * check["images"])
        lines.append(f"- file against the Keras model in integer arithmetic (TFLM, {check['images']} calibration "
                     f"images): int8 outputs identical on {same}" + ("" if same == check["images"] else
                                                                     f", up to {check['max_abs_diff']} steps apart"))
    if c["distillation"] is not None:
        lines.append(f"- distillation weight (teacher: the float original): {c['distillation']}")
    if c.get("distillation_features"):
        lines.append(f"- feature distillation weight (every ReLU output matched): {c['distillation_features']}")
    k = report["contract"]
    lo, hi = k["value_range"]
    lines.append(f"- input: {k['resolution']}x{k['resolution']}x{k['channels']}, pixels p as {lo:g} + p / 255 * "
                 f"({hi:g} - {lo:g}); outputs: {', '.join(k['labels'])}")
    if s.get("data"):
        lines.append(f"- data: {s['data']}")
    return lines


def render(report: dict) -> str:
    f = report["file"]
    out = [f"# tinyq report: {report['run']}", "",
           f"{report['kind']} run, tinyq {report['tinyq_version']}. Every number here is in `report.json`.", ""]
    out += _card(report)
    out += ["", "## Accuracy against size", "",
            "| model | accuracy | images | data | runtime | file bytes |", "|---|---|---|---|---|---|"]
    for p in report["accuracy_vs_size"]:
        size = f"{p['bytes']:,}" if p["bytes"] else "n/a"
        value = _pct(p["accuracy"]) + (" agreement with the float model" if p.get("measure") == "agreement" else "")
        out.append(f"| {p['model']} | {value} | {p['n']} | {p['data']} | {p['runtime']} | {size} |")
    if "accuracy_size" in report["plots"]:
        out += ["", "![accuracy against size](plots/accuracy_size.png)"]
    c = report["confusion"]
    if c:
        out += ["", f"## Confusion matrix ({c['data']}, {c['runtime']})", "",
                "| true \\ predicted | " + " | ".join(c["labels"]) + " |",
                "|---" * (len(c["labels"]) + 1) + "|"]
        out += [f"| {label} | " + " | ".join(map(str, row)) + " |" for label, row in zip(c["labels"], c["matrix"])]
        out += ["", "![confusion](plots/confusion.png)"]
    out += ["", "## File", "",
            f"{f['bytes']:,} bytes; {f['weight_params']:,} weight parameters in {f['packed_weight_bytes']:,} packed "
            f"bytes (file / packed weights = {f['file_over_packed_weights']}).", "",
            "| part | bytes |", "|---|---|"]
    out += [f"| {k} | {v:,} |" for k, v in f["breakdown"].items()]
    out += ["", "## Layers", "", "Clipped: non-zero weights beyond the grid's range; zero: weights exactly 0 "
            "(dead: output channels with only zeros); grid_distance: QGT's regulariser, the mean squared distance "
            "of the latent weights to their grid in steps (0.051 when spread evenly between levels): layers "
            "that stay high resist quantization.", "",
            "| layer | bits | storage | scales | params | bytes | clipped | zero | dead channels |",
            "|---|---|---|---|---|---|---|---|---|"]
    hists = {h["layer"]: h for h in report["histograms"]}
    diag = report["diagnostics"]
    weight_layers = {r["layer"] for r in report["layers"]}
    keys = sorted({k for name, d in diag.items() if name in weight_layers for k in d})
    if keys:
        out[-2] = out[-2] + "".join(f" {k} |" for k in keys)
        out[-1] = out[-1] + "---|" * len(keys)
    for r in report["layers"]:
        h = hists.get(r["layer"])
        extra = "".join(f" {diag[r['layer']][k]:.4g} |" if k in diag.get(r["layer"], {}) else " |" for k in keys)
        out.append(f"| {r['layer']} | {r['bits']} | {r['storage']} | "
                   f"{'per channel (' + str(r['channels']) + ')' if r['per_channel'] else 'per tensor'} | "
                   f"{r['params']:,} | {r['bytes']:,} | {_pct(h['clipped_fraction']) if h else 'n/a'} | "
                   f"{_pct(h['zero_fraction']) if h else 'n/a'} | {h['dead_channels'] if h else 'n/a'} |" + extra)
    act = {name: d for name, d in diag.items() if "pact_alpha" in d}
    if act:
        out += ["", "Activation clips (PACT / CG-PACT): the learned alpha of each ReLU and its bits.", "",
                "| activation layer | alpha | bits |", "|---|---|---|"]
        out += [f"| {name} | {d['pact_alpha']:.4g} | {d['act_bits']} |" for name, d in act.items()]
    out += ["", "![bits and bytes](plots/bits.png)"]
    if "weights" in report["plots"]:
        out += ["", "## Weights on their grids", "", "Latent float weights divided by their channel's scale, so "
                "every channel's levels line up; exact zeros left out.", "", "![weights](plots/weights.png)"]
    else:
        out += ["", "Weight histograms: not available (no Keras quantized model: the converter chose the weights)."]
    out += ["", "## Training"]
    if "curves" in report["plots"]:
        history = report["history"]
        measure = report["metrics"].get("measure", "accuracy")
        label = "last val agreement with the float model" if measure == "agreement" else "last val accuracy"
        out += ["", f"| phase | epochs | last loss | {label} |", "|---|---|---|---|"]
        out += [f"| {phase} | {len(eps)} | {eps[-1].get('loss', float('nan')):.4f} | "
                f"{_pct(eps[-1].get('val_' + measure))} |" for phase, eps in history.items()]
        out += ["", "![training curves](plots/curves.png)"]
    else:
        out += ["", "No training epochs (post-training quantization)."]
    return "\n".join(out) + "\n"
