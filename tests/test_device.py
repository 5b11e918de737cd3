"""tinyq device: exported models on an emulated Cortex-M4 (QEMU), bit-exact with TFLM on the host.

The slow tests build TFLM from ../shared/tflm-kit/tflm (a create_tflm_tree.py tree) with CMSIS-NN
into a cache for the session, then run int8, INT4, 2-bit LUT and mixed 2/4/8 files. The reference
kernel set is the same build with fewer sources (one flag apart, ``tinyq.device.tflm.flags``); its
TFLM build for this board is compiled and run on QEMU by the CMake export's test
(``tests/test_export.py``), and not built a second time here, which would cost the suite minutes."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import needs_device_tools, shared_path
from tinyq.cli import main
from tinyq.device import firmware, qemu
from tinyq.errors import TinyqError

KERNELS = ("cmsis-nn",)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="session")
def tflm_tree():
    needs_device_tools()
    return shared_path("tflm-kit", "tflm")


@pytest.fixture(scope="session", autouse=True)
def device_cache(tmp_path_factory):
    """One TFLM build per kernel set for the whole session, not the user's cache."""
    import os

    old = os.environ.get("TINYQ_CACHE")
    os.environ["TINYQ_CACHE"] = str(tmp_path_factory.mktemp("tinyq-cache"))
    yield
    if old is None:
        os.environ.pop("TINYQ_CACHE", None)
    else:
        os.environ["TINYQ_CACHE"] = old


@pytest.fixture(scope="session")
def mixed_run(runs, tmp_path_factory):
    """person-detect trained with a plan that mixes 2-, 4- and 8-bit layers."""
    from tinyq.graph import weight_layers
    from tinyq.recipes import get

    names = [layer.name for layer in weight_layers(get("person-detect").model(3))]
    plan = tmp_path_factory.mktemp("plan") / "plan.json"
    plan.write_text(json.dumps({"layers": [{"name": n, "bits": (8, 4, 2)[i % 3]} for i, n in enumerate(names)]}))
    out = tmp_path_factory.mktemp("mixed") / "run"
    r = invoke("train", "person-detect", "--bits", 8, "--plan", plan, "--epochs", 0, "--qat-epochs", 1,
               "--synthetic-images", 300, "--batch", 32, "--init", runs[8] / "float.h5", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("which", ["int8", "int4", "lut2", "mixed"])
def test_outputs_on_cortex_m4_equal_host_tflm(runs, mixed_run, folders, tflm_tree, kernels, which):
    from tinyq.tflite import flatbuffer

    source = {"int8": runs[8], "int4": runs[4], "lut2": runs[2], "mixed": mixed_run}[which]
    types = {flatbuffer.read(source / "model.tflite")[1].tensors[t].type
             for t in flatbuffer.read(source / "model.tflite")[1].weight_tensors()}
    if which == "mixed":
        ops = flatbuffer.read(source / "model.tflite")[1].op_names
        assert {"INT8", "INT4"} <= types and set(flatbuffer.DECODE_OPS) & set(ops)  # really 2, 4 and 8 bits
    r = invoke("device", source, "--board", "m4", "--kernels", kernels, "--tflm", tflm_tree,
               "--data", folders / "labelled", "--limit", 3, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n"] == 3 and result["identical_to_host_tflm"] == 3 and result["max_abs_diff"] == 0
    assert 0.0 <= result["accuracy"] <= 1.0
    flash = result["flash_bytes"]
    assert flash["model"] >= result["file_bytes"] and flash["tflm"] > 10_000 and flash["application"] > 0
    assert flash["total"] == sum(v for k, v in flash.items() if k != "total")
    assert not result["stdio_linked"]  # the product build links no printf
    ram = result["ram_bytes"]
    assert 0 < ram["arena_used"] <= ram["arena_buffer"] <= ram["static"] and 0 < ram["stack_used"] < 32768
    assert result["instructions_per_inference"]["median"] > 1_000_000


@pytest.mark.slow
@pytest.mark.parametrize("which", ["int8", "int4", "lut2", "mixed"])
def test_aot_engine_on_cortex_m4_equals_host_tflm(runs, mixed_run, folders, which):
    """tinyq's AOT C engine (no TFLM, no tree) on QEMU's Cortex-M4: every output TFLM's on the host."""
    needs_device_tools()
    source = {"int8": runs[8], "int4": runs[4], "lut2": runs[2], "mixed": mixed_run}[which]
    r = invoke("device", source, "--board", "m4", "--engine", "aot", "--data", folders / "labelled", "--limit", 3,
               "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["engine"] == "aot" and result["tflm"] is None
    assert result["n"] == 3 and result["identical_to_host_tflm"] == 3 and result["max_abs_diff"] == 0
    flash = result["flash_bytes"]
    assert flash["tflm"] == 0 and flash["model"] > 0 and not result["stdio_linked"]
    ram = result["ram_bytes"]
    assert ram["arena_used"] == ram["arena_buffer"] > 0 and 0 < ram["stack_used"] < 8192


def test_aot_engine_refuses_tflm_options():
    r = invoke("device", "missing.tflite", "--engine", "aot", "--kernels", "cmsis-nn")
    assert r.exit_code == 1 and r.stderr.strip().startswith("error:") and "--engine aot" in r.stderr


@pytest.mark.slow
def test_the_known_m55_difference_is_named_only_where_it_applies(runs, mixed_run):
    """TFLM with CMSIS-NN on the M55 differs for INT4 depthwise convs (docs/benchmarks.md): a file with one
    gets the cause and the way around it there, and nowhere else."""
    from tinyq.pipeline.device import known_difference
    from tinyq.tflite import flatbuffer

    mixed = flatbuffer.read(mixed_run / "model.tflite")[1]
    assert any(op.name == "DEPTHWISE_CONV_2D" and mixed.tensors[t].type == "INT4"
               for t, op in mixed.weight_tensors().items())
    assert "--engine aot" in known_difference(mixed, "m55", "cmsis-nn")
    assert known_difference(mixed, "m4", "cmsis-nn") is None and known_difference(mixed, "m55", "reference") is None
    assert known_difference(flatbuffer.read(runs[4] / "model.tflite")[1], "m55", "cmsis-nn") is None  # 8-bit depthwise


@pytest.mark.slow
def test_without_data_the_sample_runs_and_the_report_reads(runs, tflm_tree):
    """No --data: the export's sample image (the library is the one built above: only a link here)."""
    r = invoke("device", runs[2], "--tflm", tflm_tree, "--kernels", "cmsis-nn")
    assert r.exit_code == 0, r.output
    assert "outputs identical to TFLM on the host: 1 of 1" in r.stdout and "no stdio" in r.stdout
    assert "TFLM + kernels" in r.stdout and "instructions per inference" in r.stdout


def test_missing_tree_toolchain_and_bad_options_are_one_line_errors(tmp_path, monkeypatch):
    """All checked before the model is read (it does not exist here)."""
    def one_line(r, *needles):
        assert r.exit_code != 0
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output
        for needle in needles:
            assert needle in lines[0], lines[0]

    model = tmp_path / "never-read.tflite"
    monkeypatch.delenv("TFLM_DIR", raising=False)
    one_line(invoke("device", model, "--board", "m3"), "--board", "m4, m7, m55")
    one_line(invoke("device", model, "--kernels", "fast"), "--kernels", "cmsis-nn")
    one_line(invoke("device", model, "--limit", 0, "--tflm", tmp_path), "--limit")
    if shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"):
        one_line(invoke("device", model), "--tflm DIR")
        one_line(invoke("device", model, "--tflm", tmp_path), "micro_interpreter.h")
        cmsis_less = tmp_path / "tree"
        (cmsis_less / "tensorflow/lite/micro").mkdir(parents=True)
        (cmsis_less / "tensorflow/lite/micro/micro_interpreter.h").write_text("")
        one_line(invoke("device", model, "--tflm", cmsis_less), "lacks third-party code")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    one_line(invoke("device", model, "--tflm", tmp_path), "apt-get install")


MAP = """
Linker script and memory map

.text           0x00000000     0x1200
 *(.vectors)
 .vectors       0x00000000       0x40 /b/startup.o
 .text.main     0x00000040      0x100 /b/runner.o
 .text._ZN6tflite3fooEv
                0x00000140      0x800 /c/libtflm.a(conv.o)
 .text.memcpy   0x00000940       0x40 /usr/lib/arm-none-eabi/lib/thumb/v7e-m+fp/hard/libc_nano.a(libc_a-memcpy.o)
 *fill*         0x00000980        0x4 
 .rodata.g_m_model_data
                0x00000984      0x87c /b/model_data.o

.ARM.exidx      0x00001200        0x8
 .ARM.exidx     0x00001200        0x8 /usr/lib/gcc/arm-none-eabi/12.2.1/thumb/v7e-m+fp/hard/libgcc.a(_udivmoddi4.o)

.data           0x20000000       0x10 load address 0x00001208
 .data.x        0x20000000       0x10 /b/runner.o

.bss            0x20000010     0x4000
 .bss.g_arena   0x20000010     0x4000 /b/runner.o
"""


def test_flash_split_from_a_link_map():
    split, sections = firmware.flash_split(MAP, "m")
    assert split == {"model": 0x87c, "tflm": 0x800, "libc": 0x40 + 0x8, "application": 0x40 + 0x100 + 0x10,
                     "padding": 0x1200 + 0x8 + 0x10 - (0x87c + 0x800 + 0x48 + 0x150)}
    assert sections[".bss"] == 0x4000 and sections[".data"] == 0x10


def test_runner_lines_parse_and_failures_name_the_cause():
    ran = qemu.parse("arena_used_bytes 9000\nout 0 4000 -5 7\nout 1 4040 3 -3\nstack_used_bytes 1200\ndone\n", 0, 2)
    assert ran.outputs.tolist() == [[-5, 7], [3, -3]] and ran.instructions.tolist() == [4000, 4040]
    assert (ran.arena_used, ran.stack_used) == (9000, 1200)
    with pytest.raises(TinyqError, match="AllocateTensors failed"):
        qemu.parse("error: AllocateTensors failed: the arena is too small\n", 1, 2)
    with pytest.raises(TinyqError, match="1 of 2 inferences"):  # stopped without a word (a watchdog, QEMU killed)
        qemu.parse("arena_used_bytes 9000\nout 0 4000 -5 7\n", 3, 2)
