"""tinyq's public Python API: what the command line, the benchmarks and a Python user call.

    import tinyq
    run = tinyq.train(tinyq.TrainConfig(bits=2), "runs/w2")
    result = tinyq.check(run.tflite, "images/")

``import tinyq`` stays light (no TensorFlow); each name here is imported on first use.
"""
from __future__ import annotations

from tinyq.contract import InputContract
from tinyq.errors import TinyqError
from tinyq.export import TARGETS, ExportResult, export
from tinyq.fit import evaluate_keras, fit_phase
from tinyq.graph import contract_of
from tinyq.integer import IntegerModel, NotEmulated
from tinyq.layers import PACT, QuantConv2D, QuantDense, QuantDepthwiseConv2D, quantize_layers
from tinyq.logs import log_stderr
from tinyq.mixed.budget import parse_size
from tinyq.pipeline.convert import convert_run
from tinyq.pipeline.device import format_result as format_device
from tinyq.pipeline.device import run_on_device
from tinyq.pipeline.plan import plan_target
from tinyq.pipeline.quantize import QuantizeJob, ptq_kind, quantize
from tinyq.pipeline.train import TrainConfig, train
from tinyq.plan import default_plan, parse_keep
from tinyq.qat import build_qat, load_model, quantize_model
from tinyq.report import write_report
from tinyq.runfolder import Run
from tinyq.spec import QuantSpec
from tinyq.tflite.breakdown import format_table, inspect_model
from tinyq.verify import check, load_eval_data

__all__ = [
    "InputContract", "TinyqError", "TARGETS", "ExportResult", "export", "evaluate_keras", "fit_phase", "contract_of",
    "IntegerModel", "NotEmulated", "PACT", "QuantConv2D", "QuantDense", "QuantDepthwiseConv2D", "quantize_layers",
    "log_stderr", "parse_size", "convert_run", "plan_target", "QuantizeJob", "ptq_kind", "quantize", "TrainConfig",
    "train", "default_plan", "parse_keep", "build_qat", "load_model", "quantize_model", "write_report", "Run",
    "QuantSpec", "format_table", "inspect_model", "check", "load_eval_data", "run_on_device", "format_device",
]
