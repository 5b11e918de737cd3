"""What each command checks before TensorFlow is imported or any work starts: that its paths exist
and are what they should be (a model file, a run folder, an image folder, a writable output),
and that named things (boards, kernels, tools, a TFLM tree) are there. Each check is a one-line
``TinyqError`` naming the problem and the fix; the command's own function checks again in depth."""
from __future__ import annotations

from pathlib import Path

from tinyq import recipes
from tinyq.data.folder import layout
from tinyq.data.shards import is_shards, read_manifest
from tinyq.device import boards, tflm, toolchain
from tinyq.errors import TinyqError
from tinyq.runfolder import Run, require_folder_out, require_writable
from tinyq.tflite import flatbuffer


def model_file(path: str | Path) -> None:
    """A .tflite file or a run folder holding one; anything else is named (a Keras model, a SavedModel, ...)."""
    flatbuffer.read(path)


def data_folder(path: str | Path | None) -> None:
    """An image folder in the Visual Wake Words layout, or a pack of shards, when one is given."""
    if path is not None:
        if is_shards(path):
            read_manifest(path)
        else:
            layout(path)


def run_folder(path: str | Path) -> Run:
    return Run(path).require()


def check(tflite, data) -> None:
    model_file(tflite)
    data_folder(data)


def export(source, out) -> None:
    require_folder_out(out)  # first: a wrong --out costs nothing, not even reading the model
    model_file(source)


def convert(run, out) -> None:
    run_folder(run)
    if out is not None:
        require_writable(out)


def report(run, data, references) -> None:
    r = run_folder(run)
    if not r.tflite.exists():
        raise TinyqError(f"{str(r.path)!r} has no model.tflite yet; finish the run with --resume, or tinyq convert RUN")
    data_folder(data)
    for ref in references:
        model_file(ref)


def device(source, board: str, kernels: str, tree, data, engine: str = "tflm", logs: bool = False) -> None:
    boards.board(board)
    cmsis_nn = boards.kernels(kernels) == "cmsis-nn"
    boards.require_engine(engine, kernels, logs)
    toolchain.require("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-ar", "qemu-system-arm", "make")
    if engine == "tflm":
        tflm.find_tree(tree, cmsis_nn)
    model_file(source)
    data_folder(data)


def plan(target: str, data, init) -> None:
    if not Path(target).exists():
        if Path(target).suffix or "/" in target:
            raise TinyqError(f"model {target!r} does not exist; give a .h5, .keras or SavedModel folder, or a recipe "
                             f"({', '.join(sorted(recipes.all_recipes()))})")
        recipes.get(target)  # a recipe name, or the error lists the recipes
    elif data is None:
        raise TinyqError("tinyq plan MODEL needs --data DIR: images to measure the model's sensitivity on")
    if data is not None and not Path(data).is_dir():
        raise TinyqError(f"--data {data!r} is not a folder of images")
    if init is not None and not Path(init).exists():
        raise TinyqError(f"--init {init!r} does not exist; give a float .h5 or a run folder holding float.h5")
