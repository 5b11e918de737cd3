"""What a run is asked to do: the options ``train``, ``quantize`` and ``plan`` share (:class:`QuantOptions`),
a quantize job and a train config, validated on construction, before TensorFlow is imported or
any data is read (the command line builds them first, so every argument error is immediate)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tinyq import recipes
from tinyq.errors import TinyqError, expected_one_of
from tinyq.mixed.budget import require_choice, require_format
from tinyq.pipeline.distribute import require_kind
from tinyq.plan import KEEP_CHOICES, chooser, describe_plan
from tinyq.spec import QuantSpec


@dataclass(frozen=True)
class QuantOptions:
    """Weight bits and method, activation bits, the layers kept at 8 bits, and what chooses per-layer
    widths instead (``learn_bits``, ``size_budget`` in file bytes, or a ``plan`` file): at most one."""

    bits: int = 8
    method: str = "ste"
    act_bits: int = 8
    keep_8bit: tuple[str, ...] = KEEP_CHOICES
    learn_bits: bool = False  # search per-layer widths up to --bits before QAT (tinyq.mixed.learnbits)
    size_budget: int | None = None  # bytes; per-layer widths by the knapsack (tinyq.mixed.budget)
    budget_for: str = "tflite"  # what --size-budget counts: the .tflite file or the AOT engine's constants
    plan: str | None = None  # a plan file to follow (tinyq plan --out)
    distribute: str | None = None  # training on many devices: mirrored or multiworker (tinyq.pipeline.distribute)
    scale_lr: bool = False  # learning rates times the replica count

    def __post_init__(self) -> None:
        QuantSpec(method=self.method, weight_bits=self.bits, act_bits=self.act_bits, learn_bits=self.learn_bits)
        chosen = [o for o, on in (("--learn-bits", self.learn_bits), ("--size-budget", self.size_budget),
                                  ("--plan", self.plan)) if on]
        if len(chosen) > 1:
            raise TinyqError(f"{' and '.join(chosen)} each choose the per-layer widths: pass one of them")
        if self.size_budget is not None and self.size_budget <= 0:
            raise TinyqError(f"--size-budget must be a positive size such as 64KB; got {self.size_budget}")
        if self.learn_bits and self.bits <= 2:
            raise TinyqError("--learn-bits with --bits 2 has nothing to learn: --bits is the most a layer may keep; "
                             "pass --bits 4 or 8")
        if self.size_budget is not None:
            require_choice(self.bits)
        require_format(self.budget_for)
        require_kind(self.distribute)
        if self.scale_lr and not self.distribute:
            raise TinyqError("--scale-lr multiplies the learning rates by the replicas of --distribute: pass --distribute too")
        if self.budget_for != "tflite" and self.size_budget is None:
            raise TinyqError(f"--budget-for {self.budget_for} says what --size-budget counts: pass --size-budget too")

    @staticmethod
    def check_rate(option: str, value: float) -> None:
        """A learning rate: finite and positive."""
        if not (math.isfinite(value) and value > 0):
            raise TinyqError(f"{option} must be a positive learning rate such as 2e-4; got {value}")

    @staticmethod
    def check_run(seed: int, limit: int | None) -> None:
        """The seed and image limit a run takes (the command line checks them too, before any import)."""
        if not 0 <= seed < 2 ** 32:
            raise TinyqError(f"--seed must lie in 0..2^32-1; got {seed}")
        if limit is not None and limit < 1:
            raise TinyqError(f"--limit must be at least 1 image; got {limit}")

    def describe(self, chosen_by: str | None = None) -> str:
        """One log line: the widths and methods (``chosen_by`` overrides what chose per-layer widths)."""
        return describe_plan(self.bits, self.act_bits, self.method, self.keep_8bit,
                             chosen_by or chooser(self.learn_bits, self.size_budget, self.plan))


def distill_epochs(data: str | None) -> int:
    """QAT epochs when distilling a pretrained model: 3 on a folder of images; 15 on the few hundred
    generated without one, which need more passes for as many steps (docs/results.md)."""
    return 3 if data is not None else 15


PTQ_CHOICES = ("converter", "tinyq")


def ptq_kind(bits: int, choice: str) -> str:
    """``--ptq`` without a value: the converter's int8 PTQ at 8 bits, tinyq's rounding below."""
    return ("converter" if bits == 8 else "tinyq") if choice == "auto" else choice


@dataclass(frozen=True, kw_only=True)
class QuantizeJob(QuantOptions):
    model: str
    data: str | None = None  # None: images generated from the model (tinyq.data.invert)
    unlabeled: bool = False
    generated_images: int = 512
    distill: float = 0.5
    distill_features: float = 1.0  # weight of the feature term (tinyq.distill)
    epochs: int | None = None  # None: distill_epochs(data)
    batch: int = 64
    lr: float = 2e-4
    seed: int = 0
    limit: int | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    labels: tuple[str, ...] | None = None
    allow_float: bool = False
    ptq: str | None = None  # None: QAT; "converter": the TFLite converter's int8 PTQ; "tinyq": rounding only

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_run(self.seed, self.limit)
        lo, hi = self.value_range
        if not lo < hi:
            raise TinyqError(f"--value-range needs lo < hi; got {lo},{hi}")
        if self.learn_bits and self.ptq:
            raise TinyqError("--learn-bits trains (it learns widths by gradient); it cannot go with --ptq")
        if self.ptq not in (None, *PTQ_CHOICES):
            raise expected_one_of("--ptq", PTQ_CHOICES, self.ptq)
        if self.ptq and self.distribute:
            raise TinyqError(f"--ptq {self.ptq} does not train; --distribute is for training: drop one")
        if self.ptq == "converter" and (self.size_budget or self.plan):
            raise TinyqError("--ptq converter makes int8 only; per-layer widths need --ptq tinyq (or QAT)")
        if self.ptq == "converter" and self.bits != 8:
            raise TinyqError(f"--ptq converter is the TFLite converter's int8 quantization; got --bits {self.bits}: "
                             "use --ptq tinyq for 2-4 bits")
        if not 0.0 <= self.distill <= 1.0:
            raise TinyqError(f"--distill must lie in 0..1 (the weight of the teacher's term); got {self.distill}")
        if not 0.0 <= self.distill_features < math.inf:
            raise TinyqError(f"--distill-features must be >= 0 (0: outputs only); got {self.distill_features}")
        self.check_rate("--lr", self.lr)
        if self.epochs is None:
            object.__setattr__(self, "epochs", distill_epochs(self.data))
        if self.epochs < 0 or self.batch < 1:
            raise TinyqError("--epochs must be >= 0 and --batch >= 1")
        if not Path(self.model).exists():
            raise TinyqError(f"model {self.model!r} does not exist; give a .h5, .keras or SavedModel folder")
        if self.generated_images < 30:
            raise TinyqError(f"--synthetic-images must be at least 30 (three splits of both classes); got "
                             f"{self.generated_images}")

    @property
    def agreement(self) -> bool:
        """Whether the labels are the float model's top-1 (``--unlabeled``, or generated data): every
        figure is then agreement with the float model, not accuracy."""
        return self.unlabeled or self.data is None


@dataclass(frozen=True)
class TrainConfig(QuantOptions):
    recipe: str = "person-detect"
    data: str | None = None
    channels: int = 3
    # None: the default of the path taken (SCRATCH or PRETRAINED below)
    epochs: int | None = None
    qat_epochs: int | None = None
    batch: int = 64
    lr: float | None = None
    qat_lr: float | None = None
    seed: int = 0
    synthetic_images: int | None = None
    limit: int | None = None  # images per split folder (seeded sample), for quick runs
    init: str | None = None  # a float model (.h5) to start QAT from, instead of the float phase
    from_scratch: bool = False  # train the recipe from random weights even when it ships a pretrained model

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_run(self.seed, self.limit)
        pretrained = self.starts_pretrained()
        for option, value in (("--epochs", self.epochs), ("--lr", self.lr)):
            if pretrained and value is not None:
                raise TinyqError(f"{option} sets the float phase, and starting from the pretrained model has none: "
                                 "drop it, or pass --from-scratch to train the recipe from random weights")
        if pretrained and self.channels != 3:
            raise TinyqError(f"the pretrained {self.recipe} model takes RGB images; --channels {self.channels} "
                             "needs --from-scratch")
        if self.init and self.from_scratch:
            raise TinyqError("--init starts QAT from your float model and --from-scratch trains one: pass one of them")
        defaults = {**PRETRAINED, "qat_epochs": distill_epochs(self.data)} if pretrained else SCRATCH
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.synthetic_images < 30:
            raise TinyqError(f"--synthetic-images must be at least 30 (three splits of both classes); got "
                             f"{self.synthetic_images}")
        self.check_rate("--qat-lr", self.qat_lr)
        if not pretrained:
            self.check_rate("--lr", self.lr)
        if self.epochs < 0 or self.qat_epochs < 0 or (self.epochs == 0 and self.qat_epochs == 0 and not pretrained):
            raise TinyqError("--epochs and --qat-epochs must be >= 0 and not both 0")
        if self.batch < 1:
            raise TinyqError(f"--batch must be at least 1; got {self.batch}")

    def starts_pretrained(self) -> bool:
        """Whether the run quantizes the recipe's shipped model (not ``from_scratch``, no ``init``)."""
        return not self.from_scratch and not self.init and recipes.get(self.recipe).pretrained is not None

    def quantize_job(self) -> QuantizeJob:
        """The quantization of the recipe's pretrained model this config asks for."""
        recipe = recipes.get(self.recipe)
        return QuantizeJob(model=str(recipe.pretrained_path), data=self.data, epochs=self.qat_epochs,
                           lr=self.qat_lr, batch=self.batch, seed=self.seed, limit=self.limit,
                           generated_images=self.synthetic_images, value_range=recipe.value_range,
                           labels=recipe.labels, bits=self.bits, method=self.method, act_bits=self.act_bits,
                           keep_8bit=self.keep_8bit, learn_bits=self.learn_bits, size_budget=self.size_budget,
                           budget_for=self.budget_for, plan=self.plan, distribute=self.distribute,
                           scale_lr=self.scale_lr)


# the float phase and QAT of a recipe trained from random weights
SCRATCH = {"epochs": 10, "qat_epochs": 5, "lr": 1e-2, "qat_lr": 5e-4, "synthetic_images": 3000}
# distillation from the pretrained model: short and gentle, it starts where the float model is;
# without --data, the images are generated from the model (synthetic_images of them)
PRETRAINED = {"epochs": 0, "lr": 0.0, "qat_lr": 2e-4, "synthetic_images": 512}
