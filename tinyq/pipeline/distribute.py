"""Training on many devices with TensorFlow's own engine (``--distribute``).

- ``mirrored``: :class:`tf.distribute.MirroredStrategy` over every local GPU; on a machine
  without one, over ``TINYQ_CPU_REPLICAS`` logical CPU devices (default 1), which tries the path
  (and tests it) on a laptop.
- ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy`, workers from ``TF_CONFIG``
  (every worker runs the same command; worker 0, or the ``chief`` task, writes the run folder,
  the others a private ``OUT/.worker-N`` they delete when done).

``--batch`` is the global batch, split evenly across replicas; learning rates are as given,
or multiplied by the replica count with ``--scale-lr`` (the linear scaling rule of Goyal et
al. 2017, arXiv 1706.02677). Every training phase (float, sensitivity, learned widths, QAT with
distillation) builds its models and optimizers in the strategy's scope; conversion, TFLM and the
report run after it, on each worker alike.

What holds: with ``mirrored``, a seeded run repeats its losses on the same devices, and its
losses match one device's at the same global batch within a few percent (each replica's
activation ranges follow its share of the batch; the replicas' sums are added in another order;
one distillation step equals one device's); ``--resume`` is accepted (Keras' BackupAndRestore
restores the replicas from the last epoch's backup; not yet compared byte for byte with an
uninterrupted run). With ``multiworker``, losses match one device's the same way, but the order
of the collective reductions is not fixed, so runs are not bit-for-bit repeatable, and
``--resume`` is refused (the workers would have to share the run folder's backup).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tinyq.errors import TinyqError, expected_one_of

KINDS = ("mirrored", "multiworker")
CPU_REPLICAS = "TINYQ_CPU_REPLICAS"


def cluster_role() -> tuple[int, bool]:
    """(this worker's index, whether it is the chief) from ``TF_CONFIG``; a one-line error naming what is
    wrong with it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise TinyqError('--distribute multiworker reads the cluster from TF_CONFIG, which is not set: e.g. '
                         'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}\' on the first machine, index 1 on the second')
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
        if kind not in ("worker", "chief") or not 0 <= index < len(cluster[kind]):
            raise ValueError(f"task {kind} {index} is not in the cluster")
    except (ValueError, KeyError, TypeError) as e:
        raise TinyqError(f"TF_CONFIG is not a cluster and task ({type(e).__name__}: {str(e)[:80]}): give "
                         '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": N}}') from None
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return index, chief


def require_kind(kind: str | None) -> None:
    """``--distribute``: none, or one of :data:`KINDS` (with a valid ``TF_CONFIG`` for multiworker)."""
    if kind is None:
        return
    if kind not in KINDS:
        raise expected_one_of("--distribute", KINDS, kind)
    if kind == "multiworker":
        cluster_role()
    if kind == "mirrored" and os.environ.get(CPU_REPLICAS, "1").strip() not in {str(n) for n in range(1, 65)}:
        raise TinyqError(f"{CPU_REPLICAS} must be a number of logical CPU devices, 1 to 64; got "
                         f"{os.environ[CPU_REPLICAS]!r}")


@dataclass
class Distribution:
    strategy: object  # tf.distribute.Strategy
    kind: str | None
    replicas: int
    chief: bool = True
    worker: int = 0

    def scope(self):
        return self.strategy.scope() if self.kind else contextlib.nullcontext()

    def describe(self, batch: int, scale_lr: bool) -> str:
        where = "workers of TF_CONFIG" if self.kind == "multiworker" else ", ".join(
            d.split("/")[-1] for d in self.strategy.extended.worker_devices)
        lr = (f"learning rates x{self.replicas} (--scale-lr)" if scale_lr else
              f"learning rates as given (--scale-lr multiplies them by {self.replicas})")
        return (f"distribute: {self.kind} over {self.replicas} replicas ({where}); global batch {batch}, "
                f"{batch / self.replicas:g} per replica; {lr}")


_made: dict[str | None, Distribution] = {}


def distribution(kind: str | None) -> Distribution:
    """The strategy for ``kind``, made once per process, before TensorFlow runs anything else (logical CPU
    devices and the cluster can only be set up then)."""
    if kind in _made:
        return _made[kind]
    from tinyq._tf import tf

    require_kind(kind)
    if kind is None:
        made = Distribution(tf.distribute.get_strategy(), None, 1)
    elif kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            n = int(os.environ.get(CPU_REPLICAS, "1"))
            cpu = tf.config.list_physical_devices("CPU")[0]
            if n > 1:
                try:
                    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
                except RuntimeError:
                    raise TinyqError(f"{CPU_REPLICAS}={n}: TensorFlow had started before its CPU could be split; "
                                     "start a new process") from None
            strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
        made = Distribution(strategy, kind, strategy.num_replicas_in_sync)
    else:
        index, chief = cluster_role()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        made = Distribution(strategy, kind, strategy.num_replicas_in_sync, chief, index)
    _made[kind] = made
    return made


def run_distributed(kind: str | None, out: str | Path, resume: bool, body):
    """``body(folder, distribution)``, a run of ``kind`` (None: one device) into ``out``; returns the run.

    The strategy is made first, before TensorFlow runs anything; a worker that is not the chief runs
    in a private folder (:func:`worker_folder`) and returns the chief's run folder."""
    from tinyq.runfolder import Run

    dist = distribution(kind)
    if dist.kind == "multiworker" and resume:
        raise TinyqError("--resume with --distribute multiworker is not supported: the workers would have to share "
                         "the run's backup; start the run again, or resume it with --distribute mirrored or none")
    with worker_folder(dist, out) as folder:
        run = body(folder, dist)
    return run if dist.chief else Run(out)  # a worker's own folder is gone


@contextlib.contextmanager
def worker_folder(dist: Distribution, out: str | Path):
    """The run folder this process writes: ``out`` on the chief (and without a cluster), else a private
    ``out/.worker-N``, removed when the run ends."""
    if dist.chief:
        yield Path(out)
        return
    private = Path(out) / f".worker-{dist.worker}"
    shutil.rmtree(private, ignore_errors=True)
    try:
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)
