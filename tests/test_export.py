"""tinyq export: c, arduino, cmake and zephyr layouts from real trained runs, compiled for real.

Every model source is compiled with host gcc/g++ -Wall -Wextra -Werror and with
arm-none-eabi-gcc for a Cortex-M4; the CMake project is configured and built with cmake; the
C preprocessing runs on the host and its input goes through TFLM to the embedded scores.
The CMake example is built against a TFLM tree (../shared/tflm-kit/tflm) for a Cortex-M4 and
run under QEMU, where it must print OK (scores identical to the host's).
"""
import json
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import BITS
from tinyq.cli import main
from tinyq.export import TARGETS

TFLM_TARGETS = [t for t in TARGETS if t != "aot"]  # the AOT engine is tests/test_aot.py's

pytestmark = pytest.mark.slow  # exports and compiles trained runs


MODEL_SOURCES = ("model_data", "model_io", "sample_input")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def need(tool: str) -> str:
    path = shutil.which(tool)  # part of the test environment (.ci/run installs it): missing fails
    assert path, f"{tool} is not installed; the README's test command installs it"
    return path


def compile_ok(cmd, cwd):
    need(cmd[0])
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stderr}"


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """{(target, bits): (folder, --json result)} for every target and width."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for bits in BITS:
        for target in TFLM_TARGETS:
            folder = root / f"{target}-w{bits}" / ("PersonDetect" if target == "arduino" else "fw")
            r = invoke("export", runs[bits], "--target", target, "--out", folder, "--json")
            assert r.exit_code == 0, r.stderr
            out[target, bits] = folder, json.loads(r.stdout)
    return out


def model_dir(target: str, folder):
    return {"c": folder, "arduino": folder / "src" / "person_detect", "cmake": folder / "model",
            "zephyr": folder / "src"}[target]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TFLM_TARGETS)
def test_model_sources_compile_for_host_and_cortex_m4(exported, runs, target, bits):
    folder, result = exported[target, bits]
    src = model_dir(target, folder)
    headers = folder / "include" if target == "zephyr" else src
    ext = {"c": "cc", "arduino": "cpp", "cmake": "cc", "zephyr": "cc"}[target]
    for stem in MODEL_SOURCES:
        for cc in (["g++"], ["arm-none-eabi-g++", "-mcpu=cortex-m4", "-mthumb", "-Os"]):
            compile_ok(cc + ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", headers, "-c", src / f"{stem}.{ext}",
                             "-o", src / f"{stem}.{cc[0]}.o"], src)
    settings = (headers / "model_settings.h").read_text()
    assert ("X(Decode)" in settings) == (bits == 2)
    data = (src / f"model_data.{ext}").read_text()
    size = (runs[bits] / "model.tflite").stat().st_size
    assert f"g_person_detect_model_data_len = {size};" in data
    assert size <= result["flash_bytes"]["model_data.c"] <= size + 64  # the array is the flash
    assert result["arena_bytes"] >= result["arena_bytes_measured"] > 0 and result["arena_bytes"] % 16 == 0


@pytest.mark.parametrize("bits", BITS)
def test_c11_sources_and_the_preprocessing_match_python_and_tflm(runs, tmp_path, bits):
    """The C table preprocessing gives Python's int8 input, and TFLM on it gives the embedded scores."""
    from tinyq.runtimes import model_input, tflm_outputs
    from tinyq.contract import InputContract
    from tinyq.tflite import flatbuffer
    from tinyq.runfolder import Run

    out = tmp_path / "src"
    assert invoke("export", runs[bits], "--target", "c", "--lang", "c", "--out", out).exit_code == 0
    (out / "harness.c").write_text(
        '#include <stdio.h>\n#include "model_io.h"\n#include "model_settings.h"\n#include "sample_input.h"\n'
        "static int8_t input[PERSON_DETECT_INPUT_SIZE];\n"
        "int main(void) {\n  person_detect_preprocess(g_person_detect_sample_pixels, input);\n"
        "  for (int i = 0; i < PERSON_DETECT_INPUT_SIZE; ++i) printf(\"%d %d\\n\", g_person_detect_sample_pixels[i], input[i]);\n"
        "  for (int i = 0; i < PERSON_DETECT_NUM_CLASSES; ++i) printf(\"%d\\n\", g_person_detect_sample_expected[i]);\n"
        "  return 0;\n}\n")
    sources = ["model_data.c", "model_io.c", "sample_input.c"]
    compile_ok(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", "harness", "harness.c", *sources], out)
    compile_ok(["arm-none-eabi-gcc", "-std=c11", "-mcpu=cortex-m4", "-mthumb", "-Os", "-Wall", "-Wextra", "-Werror",
                "-c", *sources], out)
    lines = subprocess.run([out / "harness"], capture_output=True, text=True, check=True).stdout.splitlines()
    contract = InputContract.from_dict(Run(runs[bits]).config()["contract"])
    n = int(np.prod(contract.shape))
    pixels, c_input = np.array([l.split() for l in lines[:n]], np.int64).T
    expected = np.array(lines[n:], np.int8)
    data, fb = flatbuffer.read(runs[bits] / "model.tflite")
    py_input = model_input(fb, pixels.astype(np.uint8), contract)
    np.testing.assert_array_equal(c_input, py_input)
    scores = tflm_outputs(data, c_input.astype(np.int8).reshape((1,) + contract.shape))[0]
    np.testing.assert_array_equal(scores, expected)


@pytest.mark.parametrize("bits", BITS)
def test_arduino_library_layout(exported, bits):
    folder, _ = exported["arduino", bits]
    props = dict(l.split("=", 1) for l in (folder / "library.properties").read_text().splitlines() if "=" in l)
    assert {"name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url",
            "architectures", "includes"} <= set(props)
    assert props["name"] == "PersonDetect" and props["includes"] == "PersonDetect.h"
    widths = props["sentence"].split("-bit")[0].split()[-1].split("/")  # "a 2/8-bit person-detection model"
    assert str(bits) in widths and all(w in ("2", "4", "8") for w in widths)
    header = (folder / "src" / "PersonDetect.h").read_text()
    for h in ("model_data.h", "model_io.h", "model_settings.h", "sample_input.h"):
        assert f'#include "person_detect/{h}"' in header and (folder / "src" / "person_detect" / h).exists()
    sketch = folder / "examples" / "person_detect"
    ino = (sketch / "person_detect.ino").read_text()
    assert "#include <TensorFlowLite.h>" in ino and "#include <PersonDetect.h>" in ino
    body = (sketch / "run_sample.cpp").read_text()
    assert "MicroMutableOpResolver<PERSON_DETECT_NUM_OPS>" in body and "PERSON_DETECT_OPS(TINYQ_ADD_OP)" in body
    # the sample goes the camera's way: classify() preprocesses pixels into the input tensor
    assert "person_detect_classify(g_person_detect_sample_pixels, scores)" in body
    assert "person_detect_preprocess(pixels, g_interpreter->input(0)->data.int8)" in body
    assert ("DECODE included" in body) == (bits == 2)


def test_cmake_project_builds_the_model_library_and_names_missing_tflm(exported, tmp_path):
    folder, _ = exported["cmake", 2]
    cmake = need("cmake")
    r = subprocess.run([cmake, "-S", folder, "-B", tmp_path / "no-tflm"], capture_output=True, text=True)
    assert r.returncode != 0 and "TensorFlow Lite Micro not found" in r.stderr and "-DTFLM_DIR" in r.stderr
    for name, extra in (("host", []), ("m4", ["-DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake"])):
        build = tmp_path / name
        r = subprocess.run([cmake, "-S", folder, "-B", build, "-DTINYQ_MODEL_ONLY=ON", *extra],
                           cwd=folder, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([cmake, "--build", build], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (build / "libperson_detect_model.a").exists()
    sizes = subprocess.run([need("arm-none-eabi-size"), "-t", tmp_path / "m4" / "libperson_detect_model.a"],
                           capture_output=True, text=True, check=True).stdout
    assert int(sizes.splitlines()[-1].split()[0]) > (folder / "model" / "model_data.cc").stat().st_size // 6


@pytest.mark.slow
def test_cmake_example_builds_against_tflm_and_prints_ok_on_qemu(exported, tmp_path):
    """The exported project, TFLM built from a real tree by its CMakeLists, on QEMU's Cortex-M4."""
    from conftest import shared_path

    tree = shared_path("tflm-kit", "tflm")
    qemu = need("qemu-system-arm")
    folder, _ = exported["cmake", 2]
    build = tmp_path / "m4"
    r = subprocess.run([need("cmake"), "-S", folder, "-B", build, f"-DTFLM_DIR={tree}", "-DTINYQ_BOARD=mps2-an386",
                        f"-DCMAKE_TOOLCHAIN_FILE={folder / 'cmake' / 'arm-none-eabi.cmake'}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([need("cmake"), "--build", build, "-j2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = subprocess.run([qemu, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
                          "-semihosting", "-kernel", build / "person_detect_example"],
                         capture_output=True, text=True, timeout=300)
    said = run.stdout + run.stderr  # QEMU writes semihosted text to its stderr
    assert run.returncode == 0 and "OK: identical to the host's TFLM" in said, said
    assert "person:" in said and "MISMATCH" not in said


STUBS = {
    "Arduino.h": "#pragma once\n#include <stdint.h>\nunsigned long millis();\nstruct SerialStub { void begin(long); "
                 "void print(const char*); void println(const char*); explicit operator bool() const; };\n"
                 "extern SerialStub Serial;\n",
    "TensorFlowLite.h": "#pragma once\n#include <Arduino.h>\n",
    "zephyr/kernel.h": "#pragma once\n",
    "zephyr/sys/printk.h": "#pragma once\nextern \"C\" void printk(const char* fmt, ...);\n",
}


def test_arduino_sketch_and_zephyr_sample_compile_against_tflm(exported, tmp_path):
    """The sketch (with its camera-frame loop) and the Zephyr sample compile for a Cortex-M4 against a real
    TFLM tree's headers; the boards' own headers (Arduino.h, zephyr/kernel.h) are stubs here."""
    from conftest import shared_path

    tree = shared_path("tflm-kit", "tflm")
    stubs = tmp_path / "stubs"
    for name, text in STUBS.items():
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).write_text(text)
    includes = [f"-I{stubs}", f"-I{tree}", f"-I{tree / 'third_party/flatbuffers/include'}",
                f"-I{tree / 'third_party/gemmlowp'}", f"-I{tree / 'third_party/ruy'}"]
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c++17", "-fno-rtti",
             "-fno-exceptions", "-DTF_LITE_STATIC_MEMORY", "-Wall", "-Werror", "-c"]
    arduino, _ = exported["arduino", 2]
    sketch = arduino / "examples" / "person_detect"
    ino = tmp_path / "sketch.cpp"
    ino.write_text((sketch / "person_detect.ino").read_text())
    assert "camera_frame(pixels)" in ino.read_text() and "person_detect_classify(pixels, scores)" in ino.read_text()
    for source in (ino, sketch / "run_sample.cpp"):
        compile_ok(["arm-none-eabi-g++", *flags, *includes, f"-I{arduino / 'src'}", f"-I{sketch}", "-x", "c++",
                    source, "-o", tmp_path / (source.stem + ".o")], tmp_path)
    zephyr, _ = exported["zephyr", 2]
    sample = zephyr / "samples" / "person_detect" / "src"
    for source in (sample / "main.cpp", sample / "run_sample.cpp"):
        compile_ok(["arm-none-eabi-g++", *flags, *includes, f"-I{zephyr / 'include'}", f"-I{sample}", source,
                    "-o", tmp_path / ("z_" + source.stem + ".o")], tmp_path)


def test_zephyr_module_is_consistent(exported):
    folder, _ = exported["zephyr", 2]
    module = yaml.safe_load((folder / "zephyr" / "module.yml").read_text())
    assert module["build"] == {"cmake": "zephyr", "kconfig": "zephyr/Kconfig"}
    kconfig = (folder / "zephyr" / "Kconfig").read_text()
    symbol = kconfig.split("config ", 1)[1].split()[0]
    assert symbol == "TINYQ_PERSON_DETECT" and "depends on TENSORFLOW_LITE_MICRO" in kconfig
    cmake = (folder / "zephyr" / "CMakeLists.txt").read_text()
    assert f"if(CONFIG_{symbol})" in cmake
    for line in cmake.splitlines():
        if "${ZEPHYR_CURRENT_MODULE_DIR}/" in line and "include" not in line:
            assert (folder / line.strip().split("}/")[1].rstrip(")")).exists(), line
    for sample in module["samples"]:
        prj = (folder / sample / "prj.conf").read_text()
        assert f"CONFIG_{symbol}=y" in prj and "CONFIG_TENSORFLOW_LITE_MICRO=y" in prj
        assert (folder / sample / "src" / "run_sample.cpp").exists() and (folder / sample / "src" / "main.cpp").exists()


def test_names_become_c_identifiers(runs, tmp_path):
    out = tmp_path / "fw"
    r = invoke("export", runs[4], "--target", "c", "--lang", "c", "--name", "4-bit person (v2)", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert "g_m_4_bit_person_v2_model_data[]" in (out / "model_data.c").read_text()
    compile_ok(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-c", "model_data.c", "model_io.c"], out)


@pytest.mark.parametrize("args, message", [
    (("--target", "stm32"), "expected one of"),
    (("--target", "arduino", "--lang", "c"), "applies to --target c only"),
    (("--sample", "missing.png"), "does not exist"),
])
def test_bad_export_options(runs, tmp_path, args, message):
    r = invoke("export", runs[8], "--out", tmp_path / "fw", *args)
    assert r.exit_code != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # progress line at most, then the one-line error
    assert not (tmp_path / "fw").exists()


def test_output_under_a_file_is_a_one_line_error(runs, tmp_path):
    (tmp_path / "file").write_text("x")
    r = invoke("export", runs[8], "--target", "cmake", "--out", tmp_path / "file" / "fw")
    assert r.exit_code == 1 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_full_disk_leaves_no_file_behind(runs, tmp_path):
    """A file-size limit makes the big model_data.cc fail to write (EFBIG, like a full disk):
    one-line error, and none of the export's files, finished or temporary, is left."""
    import resource
    import signal
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "fw"
    proc = subprocess.run([sys.executable, "-c", "from tinyq.cli import main; main()", "export", str(runs[8]),
                           "--target", "arduino", "--out", str(out)],
                          capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot write") and "Traceback" not in proc.stderr
    assert not out.exists()  # no file, finished or temporary, and no empty folder either (issue 30)


def test_run_from_another_format_version(runs, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(runs[8], run)
    config = json.loads((run / "config.json").read_text())
    config["format_version"] = 99
    (run / "config.json").write_text(json.dumps(config))
    for args in (("export", run, "--out", tmp_path / "fw"), ("convert", run), ("report", run)):
        r = invoke(*args)
        assert r.exit_code == 1 and "format version 99" in r.stderr and "train it again" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "fw").exists()
