"""``tinyq device``: a model on an emulated Cortex-M, its int8 outputs checked against TFLM on the host,
with instructions per inference, flash split and RAM."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tinyq.device import boards, firmware, qemu, tflm, toolchain
from tinyq.device.boards import require_engine
from tinyq.errors import TinyqError
from tinyq.export.bundle import prepare
from tinyq.logs import Log, quiet
from tinyq.runfolder import cache_root
from tinyq.runtimes import model_input, tflm_outputs
from tinyq.verify import load_eval_data


def known_difference(fb, board: str, kernels: str) -> str | None:
    """Why TFLM on ``board`` with ``kernels`` is known to differ from TFLM on the host for this file, with the
    way around it; None when it is not (docs/benchmarks.md, issue 31)."""
    int4_depthwise = any(op.name == "DEPTHWISE_CONV_2D" and fb.tensors[t].type == "INT4"
                         for t, op in fb.weight_tensors().items())
    if board == "m55" and kernels == "cmsis-nn" and int4_depthwise:
        return ("CMSIS-NN's Helium kernel for INT4 depthwise convs is known to differ (docs/benchmarks.md): keep "
                "depthwise convs at 8 bits (--keep-8bit depthwise) or run --engine aot")
    return None


def run_on_device(source: str | Path, board: str = "m4", kernels: str = "reference", tree: str | Path | None = None,
                  data: str | Path | None = None, limit: int | None = None, logs: bool = False,
                  engine: str = "tflm", log: Log = quiet) -> dict:
    """Build ``source`` (a run folder or a .tflite) into firmware for ``board`` against the TFLM ``tree``,
    run it under QEMU on the images of ``data`` (default: the export's sample image) and compare every
    int8 output with TFLM's on the host.

    ``logs`` keeps TFLM's error messages (and with them the C library's formatted output) in the
    firmware; without, the firmware links no stdio, as a product would ship. ``engine="aot"`` builds
    tinyq's ahead-of-time C engine (:mod:`tinyq.aot`) instead of TFLM: no tree, no kernels choice.
    """
    spec, kernel_set = boards.board(board), boards.kernels(kernels)
    require_engine(engine, kernel_set, logs)
    if limit is not None and limit < 1:
        raise TinyqError(f"--limit must be at least 1; got {limit}")
    tools = toolchain.require("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-ar", "qemu-system-arm", "make")
    toolchain.require_newlib(tools["arm-none-eabi-gcc"])
    found = tflm.find_tree(tree, kernel_set == "cmsis-nn") if engine == "tflm" else None
    bundle = prepare(source, log=log)
    if data is not None:
        images = load_eval_data(data, bundle.contract, limit, log)
        pixels, labels, what = images.x, images.y, f"{len(images)} images of {data}"
    else:
        pixels, labels, what = bundle.sample_pixels[None], None, f"the sample ({bundle.sample_source})"
    x = model_input(bundle.fb, pixels, bundle.contract)
    log(f"device: TFLM on the host, {what} ...")
    host = tflm_outputs(bundle.data, x)
    t0 = time.time()
    if engine == "aot":
        log(f"device: {bundle.name} as tinyq's AOT C engine for {spec.core} ...")
        fw = firmware.build_aot(bundle, spec, cache_root() / "device" / f"aot-{spec.name}" / bundle.name)
        kernel_set = "aot"
    else:
        library = tflm.build_library(found, spec, kernel_set, logs, log)
        log(f"device: linking {bundle.name} for {spec.core} ({kernel_set} kernels) ...")
        fw = firmware.build(bundle, spec, kernel_set, found, library,
                            tflm.build_dir(found, spec, kernel_set, logs) / "firmware" / bundle.name, logs)
    build_seconds = time.time() - t0
    log(f"device: running {len(x)} inference{'s' if len(x) > 1 else ''} under qemu-system-arm -M {spec.machine} ...")
    ran = qemu.run(fw.elf, spec, x)
    identical = (ran.outputs.astype(np.int16) == host.astype(np.int16)).all(axis=1)
    result = {
        "model": str(bundle.source), "file_bytes": len(bundle.data), "board": spec.name, "core": spec.core,
        "qemu_machine": spec.machine, "engine": engine, "kernels": kernel_set,
        "tflm": str(found.root) if found else None, "n": int(len(x)),
        "data": str(data) if data is not None else None,
        "identical_to_host_tflm": int(identical.sum()),
        "known_difference": known_difference(bundle.fb, spec.name, kernel_set),
        "max_abs_diff": int(np.abs(ran.outputs.astype(np.int16) - host.astype(np.int16)).max()),
        "instructions_per_inference": {"first": int(ran.instructions[0]), "median": int(np.median(ran.instructions)),
                                       "max": int(ran.instructions.max()),
                                       "resolution": spec.tick_instructions},
        "flash_bytes": {**fw.flash, "total": fw.flash_total}, "stdio_linked": fw.stdio,
        "ram_bytes": {"static": fw.ram["static"], "arena_buffer": fw.ram["arena_buffer"],
                      "arena_used": ran.arena_used, "stack_used": ran.stack_used},
        "build_seconds": round(build_seconds, 1), "run_seconds": round(ran.seconds, 1), "elf": str(fw.elf),
    }
    if labels is not None:
        result["accuracy"] = float((ran.outputs.argmax(1) == labels).mean())
    return result


def format_result(r: dict) -> str:
    """The report ``tinyq device`` prints."""
    f, ram, ins = r["flash_bytes"], r["ram_bytes"], r["instructions_per_inference"]
    lines = [f"{r['model']} on {r['core']} ({r['qemu_machine']}, {r['kernels']} kernels): {r['n']} inference(s)",
             f"  outputs identical to TFLM on the host: {r['identical_to_host_tflm']} of {r['n']}"
             + ("" if r["identical_to_host_tflm"] == r["n"] else f"  (max |difference| {r['max_abs_diff']})")]
    if "accuracy" in r:
        lines.append(f"  accuracy {r['accuracy']:.4f} on {r['data']}")
    lines += [f"  instructions per inference {ins['median']:,} (median; first {ins['first']:,}; "
              f"+-{ins['resolution']:g}, QEMU -icount: instructions, not cycles)",
              (f"  flash {f['total']:,} bytes: AOT engine (kernels and constants) {f['model']:,}, libc {f['libc']:,}, "
               if r.get("engine") == "aot" else
               f"  flash {f['total']:,} bytes: model {f['model']:,}, TFLM + kernels {f['tflm']:,}, libc {f['libc']:,}, ")
              + f"application {f['application']:,}" + (", stdio linked" if r["stdio_linked"] else ", no stdio"),
              f"  RAM: arena {ram['arena_used']:,} used of {ram['arena_buffer']:,}, static {ram['static']:,} "
              f"(arena buffer included), stack {ram['stack_used']:,}",
              f"  build {r['build_seconds']:.0f} s, run {r['run_seconds']:.1f} s; firmware {r['elf']}"]
    return "\n".join(lines)
