"""The ``tinyq`` command: parse, call one library function, print."""
from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import click

from tinyq import interrupt
from tinyq.errors import TinyqError


def _err(msg: str) -> None:
    click.echo(msg, err=True)


class Group(click.Group):
    """Turns TinyqError and click's usage errors into one line on stderr and exit code 2/1."""

    def invoke(self, ctx):
        signal.signal(signal.SIGTERM, interrupt.handler)  # a job scheduler's stop ends like Ctrl-C
        try:
            return super().invoke(ctx)
        except TinyqError as e:
            _err(f"error: {e}")
            ctx.exit(1)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx is not None else "tinyq"
            _err(f"error: {e.format_message()} (see {cmd} --help)")
            ctx.exit(2)
        except KeyboardInterrupt as e:
            _err("interrupted; outputs written so far are complete, the last finished epoch is saved "
                 "(continue with the same command and --resume)")
            ctx.exit(143 if isinstance(e, interrupt.Terminated) else 130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinyq", message="tinyq %(version)s")
def main() -> None:
    """tinyq: train and ship 2/4/8-bit person detectors to microcontrollers (TFLite / TFLM)."""


def quant_options(command):
    """``--bits``, ``--method``, ``--act-bits``, ``--keep-8bit``: how train and quantize quantize."""
    from tinyq.quantizers import registry

    kinds = {k: ", ".join(n for n in registry.names() if registry.get(n).kind == k)
             for k in ("weights", "regulariser", "activations")}
    for option in reversed([
        click.option("--bits", type=int, default=8, show_default=True, help="Weight bits, 2 to 8."),
        click.option("--method", default="ste", show_default=True,
                     help=f"Method, or methods joined by + (tinyq methods): weights ({kinds['weights']}), "
                          f"regulariser ({kinds['regulariser']}), activations ({kinds['activations']}); "
                          "e.g. qgt+cgpact."),
        click.option("--act-bits", type=int, default=8, show_default=True,
                     help="Activation bits, 2 to 8 (below 8 with an activation method); stored as int8."),
        click.option("--keep-8bit", default="first,last,depthwise", show_default=True,
                     help="Layers kept at 8 bits: any of first,last,depthwise, or none."),
        click.option("--learn-bits", is_flag=True,
                     help="Learn each layer's width (2, 4 or 8, at most --bits) in a search epoch before QAT "
                          "(CPQ / DropBits: --method cpq)."),
        click.option("--size-budget", default=None,
                     help="File size budget, e.g. 64KB (K = 1024): every layer's width (2, 4, 8, at most --bits) "
                          "by sensitivity and a knapsack, checked on the real file."),
        budget_for_option,
        click.option("--plan", "plan_file", type=click.Path(), default=None,
                     help="Follow per-layer widths from a plan file (tinyq plan --out)."),
    ]):
        command = option(command)
    return command


def budget_for_option(command):
    """``--budget-for``: what ``--size-budget`` counts (train, quantize, plan)."""
    from tinyq.mixed.budget import BUDGET_FORMATS

    return click.option("--budget-for", type=click.Choice(list(BUDGET_FORMATS)), default="tflite", show_default=True,
                        help="What --size-budget counts: the .tflite file, or the constants of the AOT C engine "
                             "(export --target aot: weights, biases, requantization; its code comes on top).")(command)


def distribute_options(command):
    """``--distribute`` and ``--scale-lr``: training on many devices."""
    from tinyq.pipeline.distribute import KINDS

    command = click.option("--scale-lr", is_flag=True,
                           help="Multiply the learning rates by the replica count (linear scaling).")(command)
    return click.option("--distribute", type=click.Choice(list(KINDS)), default=None,
                        help="Train on every local GPU (mirrored; on a CPU, TINYQ_CPU_REPLICAS logical devices) or "
                             "on the workers of TF_CONFIG (multiworker); --batch is the global batch.")(command)


def output_options(command):
    """``--quiet`` and ``--json``: what a long command prints, for scripts and CI."""
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print the summary as one JSON object on stdout, nothing else.")(command)
    return click.option("--quiet", "-q", is_flag=True, help="No progress lines or bars; errors still print.")(command)


def _log(quiet_flag: bool):
    from tinyq.logs import log_stderr, quiet, show_progress

    show_progress(not quiet_flag)
    return quiet if quiet_flag else log_stderr


def preflight():
    """The checks a command makes before TensorFlow is imported (:mod:`tinyq.pipeline.preflight`)."""
    from tinyq.pipeline import preflight as checks

    return checks


def _size(text: str | None) -> int | None:
    from tinyq.mixed.budget import parse_size

    return None if text is None else parse_size(text)


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise TinyqError(f"--value-range takes two numbers, lo,hi (e.g. 0,1 or -1,1); got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise TinyqError(f"--value-range needs lo < hi, both finite (e.g. 0,1 or -1,1); got {text!r}")
    return lo, hi


def _default_out(recipe: str, bits: int) -> Path:
    base = Path("runs") / f"{recipe}-w{bits}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


@main.command()
@click.argument("recipe")
@quant_options
@click.option("--data", type=click.Path(), default=None,
              help="Image folder: person/ and non_person/ (optionally under train/ val/ test/). Default: images "
                   "generated from the pretrained model (drawn figures with --from-scratch).")
@click.option("--from-scratch", is_flag=True,
              help="Train the recipe from random weights (float phase, then QAT) instead of quantizing its "
                   "pretrained model.")
@click.option("--channels", type=int, default=3, show_default=True, help="3 (RGB) or 1 (grayscale, --from-scratch).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Float training epochs (--from-scratch) [default: 10].")
@click.option("--qat-epochs", type=click.IntRange(min=0), default=None,
              help="Quantization-aware epochs [default from the pretrained model: 3 with --data, 15 on generated "
                   "images; 5 --from-scratch].")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=None, help="Float learning rate, cosine decay (--from-scratch) [default: 0.01].")
@click.option("--qat-lr", type=float, default=None,
              help="QAT learning rate, cosine decay [default: 2e-4 from the pretrained model, 5e-4 --from-scratch].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seeds data order, augmentation, generated images and init.")
@click.option("--synthetic-images", type=click.IntRange(min=30), default=None,
              help="Size of the set made without --data [default: 512 generated from the pretrained model, "
                   "3000 drawn figures --from-scratch].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use at most N images per split folder (quick runs).")
@click.option("--init", type=click.Path(), default=None,
              help="Start QAT from this float model (.h5, or a run folder's float.h5) and train on --data's labels.")
@click.option("--out", type=click.Path(), default=None, help="Run folder [default: runs/RECIPE-wBITS].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last complete epoch.")
@distribute_options
@output_options
def train(recipe, bits, method, act_bits, keep_8bit, learn_bits, size_budget, budget_for, plan_file, data, from_scratch, channels,
          epochs, qat_epochs, batch, lr, qat_lr, seed, synthetic_images, limit, init, out, resume, distribute, scale_lr, quiet, as_json):
    """Make RECIPE (see tinyq models) a quantized model: its pretrained model distilled, or trained from
    scratch; writes a run folder with model.tflite."""
    from tinyq import recipes
    from tinyq.pipeline.options import TrainConfig
    from tinyq.plan import parse_keep

    recipes.get(recipe)
    config = TrainConfig(recipe=recipe, bits=bits, method=method, act_bits=act_bits, keep_8bit=parse_keep(keep_8bit),
                         data=data, from_scratch=from_scratch, channels=channels, epochs=epochs,
                         qat_epochs=qat_epochs, batch=batch, lr=lr, qat_lr=qat_lr, seed=seed,
                         synthetic_images=synthetic_images, limit=limit, init=init, learn_bits=learn_bits,
                         size_budget=_size(size_budget), budget_for=budget_for, plan=plan_file,
                         distribute=distribute, scale_lr=scale_lr)
    if out is None:
        if resume:
            raise TinyqError("--resume needs --out RUN, the run folder to continue")
        out = _default_out(recipe, bits)
    from tinyq.api import train as run_training  # TensorFlow: only once the arguments are known to be good

    run = run_training(config, out, resume=resume, log=_log(quiet))
    _summary(run, as_json, distribute)
    if data is None and not config.starts_pretrained() and not as_json:
        click.echo("note: trained on SYNTHETIC figures; for a real detector drop --from-scratch, or pass --data DIR "
                   "and train longer with --epochs 30 --qat-epochs 10")


def _summary_dict(run) -> dict:
    """What a finished run gives: file, bytes and held-out figures (``--json`` prints this object)."""
    m = run.metrics()
    measure = m.get("measure", "accuracy")
    out = {"run": str(run.path), "model": str(run.tflite), "bytes": run.tflite.stat().st_size, "measure": measure,
           "data": m.get("data"), "test_images": m.get("test_n", m.get("keras_test_n"))}
    for key in ("float", "keras", "tflm"):
        if f"{key}_test_{measure}" in m:
            out[f"{key}_test_{measure}"] = m[f"{key}_test_{measure}"]
    return out


def _summary(run, as_json: bool = False, distribute: str | None = None) -> None:
    """The run's held-out figures, the float model's beside the quantized ones where the data has labels;
    on a worker of a cluster that is not the chief, which writes the run, one line saying so."""
    if distribute == "multiworker":
        from tinyq.pipeline.distribute import cluster_role

        index, chief = cluster_role()
        if not chief:
            click.echo(json.dumps({"worker": index, "run": str(run.path)}) if as_json else
                       f"worker {index}: done; the chief writes the run folder {run.path}")
            return
    s = _summary_dict(run)
    if as_json:
        click.echo(json.dumps(s))
        return
    measure = s["measure"]
    click.echo(f"run folder: {run.path}")
    if s["test_images"]:
        what = "agreement with the float model" if measure == "agreement" else "accuracy"
        click.echo(f"  {what} on {s['test_images']} held-out images ({s['data']}):")
        for key, name in (("float", "float model (Keras)"), ("keras", "quantized (Keras)"),
                          ("tflm", "model.tflite (TFLM)")):
            if f"{key}_test_{measure}" in s:
                click.echo(f"    {name:<21} {s[f'{key}_test_{measure}']:.4f}")
    click.echo(f"  model.tflite: {s['bytes']:,} bytes")
    click.echo(f"next: tinyq check {run.tflite} --data DIR   |   tinyq export {run.path} --target c --out firmware/")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Images: person/ + non_person/ (optionally under train/ val/ test/); with --unlabeled any folder. "
                   "Default: images generated from MODEL's batch-norm statistics (figures are then agreement).")
@quant_options
@click.option("--unlabeled", is_flag=True, help="Ignore labels: the float model alone supervises.")
@click.option("--synthetic-images", "generated_images", type=click.IntRange(min=30), default=512,
              show_default=True, help="Images to generate from MODEL without --data.")
@click.option("--distill", type=float, default=0.5, show_default=True,
              help="Weight of the float model's outputs in the loss (the rest: labels); 1 with --unlabeled.")
@click.option("--distill-features", type=float, default=1.0, show_default=True,
              help="Weight of matching the float model's activations, layer by layer (0: outputs only).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="QAT epochs [default: 3 with --data, 15 on generated images].")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Learning rate (cosine decay).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N images per split folder.")
@click.option("--value-range", default="0,1", show_default=True,
              help="Model input range: pixels p become lo + p/255 * (hi - lo).")
@click.option("--labels", default=None, help="Class names in output order [default for 2 classes: non_person,person].")
@click.option("--allow-float", is_flag=True,
              help="Leave layers tinyq cannot quantize out of QAT (a warning names them) instead of failing.")
@click.option("--ptq", is_flag=False, flag_value="auto", default=None,
              type=click.Choice(["auto", "converter", "tinyq"]),
              help="Post-training quantization baseline, no training: 'converter' (the TFLite converter's int8), "
                   "'tinyq' (per-channel rounding with searched clipping, any bits); bare --ptq: converter "
                   "at 8 bits, tinyq below.")
@click.option("--out", type=click.Path(), default=None, help="Run folder [default: runs/MODEL-wBITS].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last complete epoch.")
@distribute_options
@output_options
def quantize(model, data, bits, method, act_bits, keep_8bit, learn_bits, size_budget, budget_for, plan_file, unlabeled,
             generated_images, distill, distill_features, epochs, batch, lr, seed, limit, value_range, labels,
             allow_float, ptq, out, resume, distribute, scale_lr, quiet, as_json):
    """Quantize a float Keras classifier (.h5, .keras, SavedModel) with QAT and distillation."""
    from tinyq.pipeline.options import QuantizeJob, ptq_kind
    from tinyq.plan import parse_keep

    lo, hi = _range(value_range)
    job = QuantizeJob(model=model, data=data, bits=bits, method=method, act_bits=act_bits,
                      keep_8bit=parse_keep(keep_8bit),
                      unlabeled=unlabeled, generated_images=generated_images, distill=distill, distill_features=distill_features, epochs=epochs,
                      batch=batch, lr=lr, seed=seed, limit=limit,
                      value_range=(lo, hi), labels=tuple(labels.split(",")) if labels else None,
                      allow_float=allow_float, ptq=ptq_kind(bits, ptq) if ptq else None, learn_bits=learn_bits,
                      size_budget=_size(size_budget), budget_for=budget_for, plan=plan_file,
                      distribute=distribute, scale_lr=scale_lr)
    if out is None:
        if resume:
            raise TinyqError("--resume needs --out RUN, the run folder to continue")
        out = _default_out(Path(model).stem + (f"-ptq-{job.ptq}" if job.ptq else ""), bits)
    from tinyq.api import quantize as run_quantize

    run = run_quantize(job, out, resume=resume, log=_log(quiet))
    _summary(run, as_json, distribute)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--bits", type=int, default=None, help="Weight storage: 2 (LUT), 4 (INT4) or 8 (INT8); "
              "default: as trained. Only widening is lossless, so at least the trained bits.")
@click.option("--out", type=click.Path(), default=None, help="Output .tflite [default: RUN/model.tflite].")
@click.option("--no-compact", is_flag=True,
              help="Keep the converter's file as it is (names, all quantization parameters, metadata).")
@click.option("--keep-uncompacted", is_flag=True, help="Also write X.uncompacted.tflite beside the output, for debugging.")
def convert(run, bits, out, no_compact, keep_uncompacted):
    """Convert a run's QAT model to a full-integer .tflite (compacted; see tinyq inspect)."""
    preflight().convert(run, out)
    from tinyq.api import convert_run, log_stderr

    click.echo(str(convert_run(run, storage_bits=bits, out=out, log=log_stderr, compact=not no_compact,
                               keep_uncompacted=keep_uncompacted)))


@main.command()
@click.argument("source", type=click.Path())
@click.option("--target", default="c", show_default=True,
              help="c (sources), arduino (a library with an example sketch), cmake (a project with a TFLM "
                   "example), zephyr (a module with a sample) or aot (plain C99 with no TFLM: tinyq's own "
                   "ahead-of-time engine).")
@click.option("--out", type=click.Path(), required=True, help="Output folder.")
@click.option("--lang", type=click.Choice(["cc", "c"]), default="cc", show_default=True,
              help="--target c: C++17 (.cc) or C11 (.c) sources.")
@click.option("--name", default=None, help="C name of the model [default: the recipe].")
@click.option("--sample", type=click.Path(), default=None,
              help="An image to embed with the scores TFLM gives for it on the host [default: a synthetic person].")
@click.option("--json", "as_json", is_flag=True, help="Print files, arena and flash bytes as JSON.")
def export(source, target, out, lang, name, sample, as_json):
    """Firmware sources or a project for a run folder or .tflite; reports arena and flash bytes."""
    preflight().export(source, out)
    from tinyq.api import export as do_export
    from tinyq.api import log_stderr

    result = do_export(source, out, target=target, lang=lang, name=name, sample=sample, log=log_stderr)
    if as_json:
        click.echo(json.dumps({"files": [str(p) for p in result.files], "arena_bytes": result.arena,
                               "arena_bytes_measured": result.arena_measured, "flash_bytes": result.flash,
                               "flash_unmeasured": result.flash_unmeasured or None}, indent=2))
        return
    for path in result.files:
        click.echo(str(path))


@main.command()
@click.argument("run", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Also measure this run, its float original and each --reference on this folder (e.g. Visual Wake Words images).")
@click.option("--reference", "references", multiple=True, type=click.Path(),
              help="A .tflite to compare against on --data (repeatable), e.g. the MLPerf int8 model.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use at most N images of --data.")
def report(run, data, references, limit):
    """Write RUN/report.md, RUN/report.json and RUN/plots/*.png."""
    if references and data is None:
        raise TinyqError("--reference needs --data DIR: references are measured on the same images as the run")
    preflight().report(run, data, references)
    from tinyq.api import log_stderr, write_report

    rep = write_report(run, data, references, limit, log=log_stderr)
    for p in rep["accuracy_vs_size"]:
        agreement = " agreement with the float model," if p.get("measure") == "agreement" else ""
        click.echo(f"  {p['model']:<28} {100 * p['accuracy']:5.1f}%{agreement}  {p['n']:>5} images of {p['data']}  "
                   f"({p['runtime']}){'  ' + format(p['bytes'], ',') + ' bytes' if p['bytes'] else ''}")
    click.echo(f"wrote {Path(run) / 'report.md'}, report.json and {len(rep['plots'])} plots in {Path(run) / 'plots'}")


@main.command()
@click.argument("tflite", type=click.Path())
@click.option("--data", type=click.Path(), required=True, help="Image folder (person/ + non_person/).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N images (seeded sample).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout, nothing else.")
def check(tflite, data, limit, as_json):
    """Run TFLITE in LiteRT and TFLM on a data folder: accuracy, agreement, arena, size."""
    preflight().check(tflite, data)
    from tinyq.api import check as do_check
    from tinyq.api import log_stderr

    result = do_check(tflite, data, limit=limit, log=log_stderr)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['file']}: {result['file_bytes']:,} bytes, {result['n']} images from {result['data']}")
    names = {"float": "float model (Keras)", "keras": "QAT model (Keras)", "litert": "LiteRT", "tflm": "TFLM"}
    for rt, shown in names.items():
        entry = result.get(rt)
        if entry is None:
            continue
        if "skipped" in entry:
            click.echo(f"  {shown:<19} skipped: {entry['skipped']}")
            continue
        extra = ""
        if "agreement_with_keras" in entry:
            extra = f"  agreement with Keras {entry['agreement_with_keras']:.4f}"
            if entry["disagreements"]:
                extra += (f" ({entry['disagreements']} differ, each where Keras's top two probabilities are within "
                          f"{entry['keras_margin_max']:.3f})")
        arena = f"  arena {entry['arena_bytes']:,} bytes" if "arena_bytes" in entry else ""
        click.echo(f"  {shown:<19} accuracy {entry['accuracy']:.4f}{extra}{arena}")
    integer = result.get("keras_integer")
    if integer is not None:
        if "skipped" in integer:
            click.echo(f"  Keras in integer arithmetic: skipped ({integer['skipped']})")
        else:
            click.echo(f"  Keras in integer arithmetic: accuracy {integer['accuracy']:.4f}, agreement with TFLM "
                       f"{integer['agreement_with_tflm']:.4f}, int8 outputs identical on "
                       f"{integer['identical_outputs']:.1%} of images")
    if "litert_vs_tflm_max_abs_diff" in result:
        click.echo(f"  LiteRT vs TFLM: max |int8 output difference| = {result['litert_vs_tflm_max_abs_diff']}")


@main.command()
@click.argument("source", type=click.Path())
@click.option("--board", default="m4", show_default=True,
              help="m4 (Cortex-M4F, QEMU mps2-an386), m7 (Cortex-M7, mps2-an500) or m55 (Cortex-M55, mps3-an547).")
@click.option("--kernels", default="reference", show_default=True, help="TFLM kernels: reference or cmsis-nn.")
@click.option("--tflm", "tflm_dir", type=click.Path(), default=None,
              help="TensorFlow Lite Micro tree (create_tflm_tree.py output, the Arduino library or a tflite-micro "
                   "checkout) [default: $TFLM_DIR].")
@click.option("--data", type=click.Path(), default=None,
              help="Image folder (person/ + non_person/) [default: the export's sample image].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N images of --data.")
@click.option("--logs", is_flag=True, help="Keep TFLM's error messages in the firmware (links the C library's stdio).")
@click.option("--engine", default="tflm", show_default=True,
              help="tflm (TensorFlow Lite Micro with --kernels) or aot (tinyq's ahead-of-time C engine, no TFLM).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout, nothing else.")
def device(source, board, kernels, tflm_dir, data, limit, logs, engine, as_json):
    """Run SOURCE (a run folder or a .tflite) on an emulated Cortex-M: outputs against TFLM on the host,
    instructions per inference, flash and RAM."""
    preflight().device(source, board, kernels, tflm_dir, data, engine, logs)
    from tinyq.api import format_device, log_stderr, run_on_device

    result = run_on_device(source, board=board, kernels=kernels, tree=tflm_dir, data=data, limit=limit, logs=logs,
                           engine=engine, log=log_stderr)
    click.echo(json.dumps(result) if as_json else format_device(result))
    if result["identical_to_host_tflm"] != result["n"]:
        raise TinyqError(f"{result['n'] - result['identical_to_host_tflm']} of {result['n']} outputs on the board differ "
                         f"from TFLM's on the host; {result['known_difference'] or 'please report it with the model'}")


@main.command()
@click.argument("tflite", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout, nothing else.")
def inspect(tflite, as_json):
    """Per-tensor types, bits and bytes, and where the file's bytes go."""
    from tinyq.tflite.breakdown import format_table, inspect_model  # no TensorFlow: a flatbuffer reader

    info = inspect_model(tflite)
    click.echo(json.dumps(info) if as_json else format_table(info))


@main.group()
def data():
    """Data sets: Visual Wake Words built from COCO; TFRecord shards to stream."""


@data.command("vww")
@click.option("--coco", required=True, type=click.Path(),
              help="A local COCO download: annotations/instances_{train,val}YEAR.json and trainYEAR/ valYEAR/.")
@click.option("--out", required=True, type=click.Path(), help="Folder for OUT/{train,val,test}/{person,non_person}/.")
@click.option("--year", type=click.Choice(["2014", "2017"]), default="2014", show_default=True)
@click.option("--min-area", type=float, default=0.005, show_default=True,
              help="person: a person annotation covers more than this fraction of the image.")
@click.option("--size", type=int, default=96, show_default=True, help="Resize every image to SIZE x SIZE, once.")
@click.option("--minival", type=click.Path(), default=None,
              help="A file of image ids (one per line) for test/, COCO's train and val pooled for the rest, as the "
                   "MLPerf Tiny reference [default: COCO's val is test/].")
@click.option("--val-fraction", type=float, default=0.02, show_default=True,
              help="Train images (by a fixed hash of the id) held out in val/ for epoch validation.")
@click.option("--workers", type=int, default=0, show_default=True, help="Processes resizing (0: one per core).")
@output_options
def data_vww(coco, out, year, min_area, size, minival, val_fraction, workers, quiet, as_json):
    """Build Visual Wake Words (person / non_person) from COCO; run again to resume."""
    from tinyq.data.vww import VwwJob, build_vww

    job = VwwJob(coco=coco, out=out, year=int(year), min_area=min_area, size=size, minival=minival,
                 val_fraction=val_fraction, workers=workers)
    summary = build_vww(job, _log(quiet or as_json))
    click.echo(json.dumps(summary.to_dict()) if as_json else summary.table())


@data.command("pack")
@click.argument("source", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="A new folder for the shards and manifest.json.")
@click.option("--size", type=int, default=96, show_default=True, help="Images resized once to SIZE x SIZE.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
@click.option("--images-per-shard", type=int, default=2048, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the shuffle across shards (and the split of a folder without train/ val/ test/).")
@click.option("--workers", type=int, default=0, show_default=True, help="Processes encoding (0: one per core).")
@output_options
def data_pack(source, out, size, channels, images_per_shard, seed, workers, quiet, as_json):
    """Pack an image folder into TFRecord shards that --data streams.

    SOURCE: person/ and non_person/, optionally under train/ val/ test/ (else split 80/10/10)."""
    preflight().data_folder(source)
    if workers < 0:
        raise TinyqError(f"--workers must be 0 (one per core) or more; got {workers}")
    from tinyq.data.shards import pack

    manifest = pack(source, out, size=size, channels=int(channels), per_shard=images_per_shard, seed=seed,
                    workers=workers, log=_log(quiet or as_json))
    if as_json:
        click.echo(json.dumps(manifest))
        return
    for name, part in manifest["splits"].items():
        click.echo(f"{name:<6}{part['images']:>9,} images {part['counts']} in {len(part['shards'])} shards")
    click.echo(f"wrote {out} ({len(manifest['skipped'])} unreadable skipped): train with --data {out}")


@main.command()
def models():
    """The model recipes there are."""
    from tinyq import recipes

    for name, r in recipes.all_recipes().items():
        click.echo(f"{name:<16} {r.summary}")


@main.command()
@click.argument("target")
@click.option("--size-budget", required=True, help="File size budget, e.g. 64KB (K = 1024) or 200000 (bytes).")
@click.option("--data", type=click.Path(), default=None,
              help="Images to measure sensitivity on (labels not needed) [recipe default: synthetic].")
@click.option("--init", type=click.Path(), default=None, help="Trained float weights for a recipe (.h5 or run folder).")
@click.option("--bits", type=int, default=8, show_default=True, help="The most bits a layer may take.")
@click.option("--method", default="ste", show_default=True, help="Method the plan is for (tinyq methods).")
@click.option("--act-bits", type=int, default=8, show_default=True)
@click.option("--estimator", type=click.Choice(["hutchinson", "fisher"]), default="hutchinson", show_default=True,
              help="Hessian trace estimate: Hutchinson, or the Fisher approximation.")
@click.option("--value-range", default="0,1", show_default=True, help="A model file's input range (as quantize).")
@click.option("--limit", type=click.IntRange(min=1), default=2000, show_default=True, help="Images read per split folder.")
@budget_for_option
@click.option("--out", type=click.Path(), default="plan.json", show_default=True,
              help="Plan file, for train/quantize --plan.")
def plan(target, size_budget, data, init, bits, method, act_bits, estimator, value_range, limit, budget_for, out):
    """Per-layer bits for TARGET (a recipe or a model file) within --size-budget; no training."""
    budget = _size(size_budget)
    preflight().plan(target, data, init)
    from tinyq.api import log_stderr, plan_target

    result = plan_target(target, budget, data=data, init=init, bits=bits, method=method,
                         act_bits=act_bits, estimator=estimator, value_range=_range(value_range), limit=limit,
                         out=out, budget_for=budget_for, log=log_stderr)
    click.echo(result.table())
    click.echo(f"wrote {out}: tinyq train/quantize ... --plan {out}")


@main.command()
def methods():
    """The weight-quantization methods there are."""
    from tinyq.quantizers import registry

    for name in registry.names():
        m = registry.get(name)
        click.echo(f"{name:<10} {m.kind:<12} {m.quantizes}; {m.paper}")


if __name__ == "__main__":
    sys.exit(main())
