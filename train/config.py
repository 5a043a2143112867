"""The training configuration: frozen dataclasses, one place per setting (default, help, checks).

Per-method settings sit in their own section (`reciprocal`, `detector`, `sla`, `rkd`,
`long_tail` with `m2m`); the command line and YAML files see them flat, under the flag's name
(`--sla-task` -> `sla.task`). `python -m train --help` is generated from the `help` below, and
each section's `validate()` rejects bad values with a message naming the flag. The resolved
config (defaults filled in) is written to every run's config.json, nested as here.
"""
from __future__ import annotations

import math
import multiprocessing
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from cli_errors import UserError
from data.image_files import parse_image_size
from handlers.resize import DEFAULT_POLICY, POLICIES
from models import DETECTORS
from models import linear_head, reciprocal_points
from models.backbones import BACKBONES
from models.sla import NUM_VIEWS
from train.augment import AUGMENTATIONS
from train.losses import LOSSES, task_names
from train.losses.class_balanced import CLASS_BALANCED, SIGMOID_LOSSES

SCORES_OF_HEAD = {"linear": linear_head.SCORES, "reciprocal": reciprocal_points.SCORES}
DEFAULT_SCORE = "mls"  # max logit; for reciprocal heads -max_k l_k, from the point distances


def setting(default, help: str, flag: str | None = None, old_names: tuple[str, ...] = ()):
    """A field with its help text; `flag` overrides the flag name (default: prefix + name);
    `old_names` are earlier flag names still accepted."""
    return field(default=default, metadata={"help": help, "flag": flag, "old_names": old_names})


def section(cls: type, prefix: str):
    """A nested section whose flags are `prefix` + field name."""
    return field(default_factory=cls, metadata={"prefix": prefix})


def positive(values: dict[str, float]) -> None:
    for flag, value in values.items():
        if not value > 0:
            raise UserError(f"--{flag} must be > 0, got {value}")


def non_negative(values: dict[str, float]) -> None:
    for flag, value in values.items():
        if not value >= 0:
            raise UserError(f"--{flag} must be >= 0, got {value}")


def check_choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"unknown {flag} {value!r}; choose from {', '.join(choices)}")


@dataclass(frozen=True)
class ReciprocalConfig:
    """The reciprocal-point head (rpl / arpl, also as an SLA or RKD task)."""
    open_space_weight: float = setting(0.1, "lambda of the open-space term (rpl/arpl)")
    points_per_class: int = setting(4, "reciprocal points per class (M)")
    feature_scale: float = setting(8.0, "> 0: L2-normalise the embedding to this norm (rpl/arpl)")

    def validate(self) -> None:
        positive({"points-per-class": self.points_per_class})
        non_negative({"open-space-weight": self.open_space_weight,
                      "feature-scale": self.feature_scale})


@dataclass(frozen=True)
class DetectorConfig:
    """The post-hoc detector that computes the served unknown score (models/detectors)."""
    name: str = setting("knn", "served unknown score from a post-hoc detector on the embedding: "
                        f"none (the head's --score) | {' | '.join(DETECTORS)}", flag="detector")
    knn_k: int = setting(1, "knn / fusion: score by the cosine distance to the k-th nearest bank "
                         "embedding")
    bank_size: int = setting(1024, "knn / fusion: feature-bank rows kept in the model (seeded "
                             "subsample of the training split)")

    def validate(self) -> None:
        check_choice("--detector", self.name, ("none", *DETECTORS))
        positive({"knn-k": self.knn_k, "bank-size": self.bank_size})
        if self.knn_k > self.bank_size:
            raise UserError(f"--knn-k {self.knn_k} is larger than the feature bank (--bank-size "
                            f"{self.bank_size})")

    def check_bank(self, n_train: int) -> None:
        """k-NN (served, or in the suite every run fits) needs k bank rows, and the bank is at
        most the training split."""
        if self.knn_k > n_train:
            raise UserError(f"--knn-k {self.knn_k} is larger than the feature bank: the training "
                            f"split has {n_train} images")


@dataclass(frozen=True)
class SlaConfig:
    """SLA (--method sla, Lee et al. 2020): the shipped single-pass head is trained by `task`."""
    task: str = setting("softmax", "method of the single-pass head SLA distils into: "
                        + " | ".join(task_names()))
    transform: str = setting("rotation", "SLA transformations: rotation (M = 4) | permutation "
                             "(M = 6, RGB input)")
    temperature: float = setting(1.0, "SLA self-distillation temperature T")
    aggregate_loss: bool = setting(False, "SLA: also train the aggregated prediction s with "
                                   "CE(s, y) (the official code's --with-training-agg)")

    def validate(self) -> None:
        check_choice("--sla-task", self.task, task_names())
        check_choice("--sla-transform", self.transform, NUM_VIEWS)
        positive({"sla-temperature": self.temperature})

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Rotations need square images; channel permutations need colour."""
        channels, height, width = input_shape
        if self.transform == "rotation" and height != width:
            raise UserError(f"--sla-transform rotation needs square images, got {height}x{width}")
        if self.transform == "permutation" and channels != 3:
            raise UserError(f"--sla-transform permutation needs RGB images, got {channels} channel(s)")


@dataclass(frozen=True)
class RkdConfig:
    """Relational knowledge distillation (Park et al. 2019) from a finished teacher run."""
    teacher: str | None = setting(None, "run directory of a trained teacher: distil this run "
                                  "from it with RKD", flag="teacher")
    distance_weight: float = setting(25.0, "weight of the RKD distance-wise loss")
    angle_weight: float = setting(50.0, "weight of the RKD angle-wise loss")

    def validate(self) -> None:
        non_negative({"rkd-distance-weight": self.distance_weight,
                      "rkd-angle-weight": self.angle_weight})


@dataclass(frozen=True)
class M2mConfig:
    """M2m (Kim et al. 2020): translate majority seeds into minority samples with a fixed
    plain-CE classifier (the paper's g) from `start_epoch` on."""
    enabled: bool = setting(False, "M2m: translate majority seeds into minority samples "
                            "(imbalanced training data)", flag="m2m")
    generator_run: str | None = setting(None, "run directory of the plain-CE classifier that "
                                        "steers the generation (the paper's g; default: train it "
                                        "into OUT/g first)", old_names=("m2m_g",))
    start_epoch: int = setting(20, "epochs of plain training before re-sampling + generation start")
    beta: float = setting(0.999, "beta of M2m's seed distribution and acceptance "
                          "1 - beta^(N_k0 - N_k)")
    seed_weight: float = setting(0.5, "lambda: weight of the trained classifier's seed-class "
                                 "logit in the generation objective", flag="m2m_lambda")
    accept_confidence: float = setting(0.9, "gamma: accept a sample only when the generator run "
                                       "gives the target class >= gamma", flag="m2m_gamma")
    step_size: float = setting(0.1, "eta: L2 step size of the generation", flag="m2m_eta")
    steps: int = setting(10, "normalised-gradient steps per generation (T)")

    def validate(self, epochs: int) -> None:
        if not 0 <= self.beta < 1:
            raise UserError(f"--m2m-beta must be in [0, 1), got {self.beta}")
        if not 0 <= self.accept_confidence <= 1:
            raise UserError(f"--m2m-gamma must be in [0, 1], got {self.accept_confidence}")
        non_negative({"m2m-lambda": self.seed_weight, "m2m-eta": self.step_size,
                      "m2m-steps": self.steps})
        if self.generator_run is not None and not self.enabled:
            raise UserError("--m2m-generator-run is only used with --m2m")
        if self.enabled and not 0 <= self.start_epoch < epochs:
            raise UserError(f"--m2m-start-epoch must be in 0..{epochs - 1} (--epochs {epochs}), "
                            f"got {self.start_epoch}")


@dataclass(frozen=True)
class LongTailConfig:
    """Long-tailed training data and the fixes for it (class-balanced losses, LA, DRS, M2m)."""
    imbalance: float = setting(1.0, "long-tailed training split: rho = n_max / n_min (>= 1; 1 = "
                               "as loaded)")
    imbalance_order: str | None = setting(None, "class names most frequent first, e.g. 9,8,...,0 "
                                          "(default: known-class order)")
    loss: str = setting("ce", f"ce | {' | '.join(CLASS_BALANCED)} (class-balanced; reciprocal "
                        "heads: cb-softmax)")
    cb_beta: float = setting(0.999, "effective-number beta of the class-balanced loss, in [0, 1)")
    focal_gamma: float = setting(1.0, "focusing gamma of cb-focal")
    logit_adjust: float = setting(0.0, "tau of logit-adjusted CE, CE(l + tau log prior, y) "
                                  "(0 = off; any method)")
    drs: bool = setting(False, "deferred re-sampling: class-balanced batches from --drs-start of "
                        "the training")
    drs_start: float = setting(0.667, "fraction of the epochs trained on the natural distribution "
                               "before --drs")
    m2m: M2mConfig = section(M2mConfig, "m2m_")

    def validate(self, head: str, method: str, epochs: int) -> None:
        if not self.imbalance >= 1:
            raise UserError(f"--imbalance must be >= 1 (n_max / n_min), got {self.imbalance}")
        if self.loss != "ce":
            check_choice("loss", self.loss, ("ce", *CLASS_BALANCED))
        if self.loss in SIGMOID_LOSSES and head != "linear":
            raise UserError(f"--loss {self.loss} needs the linear head (--method softmax); "
                            f"{method} takes --loss ce or cb-softmax")
        if not 0 <= self.cb_beta < 1:
            raise UserError(f"--cb-beta must be in [0, 1), got {self.cb_beta}")
        non_negative({"focal-gamma": self.focal_gamma})
        if not 0 <= self.logit_adjust < math.inf:
            raise UserError(f"--logit-adjust must be finite and >= 0, got {self.logit_adjust}")
        if self.logit_adjust > 0 and self.loss != "ce":
            raise UserError(f"--logit-adjust replaces the CE term; it cannot be combined with "
                            f"--loss {self.loss}")
        if not 0 <= self.drs_start < 1:
            raise UserError(f"--drs-start must be in [0, 1), got {self.drs_start}")
        if self.drs and self.m2m.enabled:
            raise UserError("--drs and --m2m both re-sample batches; M2m already includes the "
                            "re-sampling")
        self.m2m.validate(epochs)


@dataclass(frozen=True)
class ImagesConfig:
    """How images become the model's input: size, resize policy, and reading image files."""
    image_size: str | None = setting(None, "the model's input H or H,W (default: image files: "
                                     "the median of 256 sampled files, announced; arrays: "
                                     "their own size)")
    resize: str = setting(DEFAULT_POLICY, f"{' | '.join(POLICIES)}: how an image of another size "
                          "or aspect ratio becomes H x W (recorded in the ONNX; the server applies "
                          "the same)")
    workers: int = setting(0, "processes decoding image files (the load-time scan, and DataLoader "
                           "workers when the images exceed --cache-mb)")
    cache_mb: float = setting(2048.0, "decoded file images kept in memory (MiB, shared by the "
                              "workers); past it, images are decoded from their files when read")
    strict: bool = setting(False, "stop at the first unreadable image file (default: skip it, "
                           "count it, list it in OUT/skipped.txt)")

    def validate(self) -> None:
        parse_image_size(self.image_size)
        check_choice("--resize", self.resize, POLICIES)
        non_negative({"workers": self.workers, "cache-mb": self.cache_mb})
        if not math.isfinite(self.cache_mb):
            raise UserError(f"--cache-mb must be finite, got {self.cache_mb}")
        if self.workers and "fork" not in multiprocessing.get_all_start_methods():
            raise UserError("--workers needs fork()ed processes (they share the image cache), "
                            "which this platform lacks: use --workers 0")


@dataclass(frozen=True)
class TransferConfig:
    """Starting from pretrained weights (models/pretrained.py)."""
    pretrained: str | None = setting(None, "backbone weights to start from: a torchvision-format "
                                     "state dict (e.g. resnet18-*.pth; its fc head is replaced) "
                                     "or another run's model.pt", flag="pretrained")
    head_epochs: int = setting(0, "with --pretrained: train the new head alone (backbone frozen, "
                               "its BatchNorm statistics kept) for this many of the --epochs "
                               "first; the learning-rate schedule spans all --epochs")

    def validate(self, epochs: int) -> None:
        non_negative({"head-epochs": self.head_epochs})
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise UserError(f"--pretrained {self.pretrained}: no such file")
        if self.head_epochs and self.pretrained is None:
            raise UserError("--head-epochs trains a new head on pretrained features: it needs "
                            "--pretrained")
        if self.head_epochs >= epochs:
            raise UserError(f"--head-epochs {self.head_epochs} leaves no fine-tuning epoch of "
                            f"--epochs {epochs}")


@dataclass(frozen=True)
class TrainConfig:
    method: str = setting("arpl", f"{' | '.join(LOSSES)} (default arpl)")
    dataset: str = setting("mnist5k", "mnist5k | digits | npz:PATH | folder:PATH | list:PATH "
                           "(`path,class` lines) | cifar10:PATH | cifar100:PATH")
    out: str = setting("runs/default", "run directory (checkpoint, config.json, metrics.json, "
                       "split.npz, plots)")
    known: str | None = setting(None, "known classes, e.g. 0,1,2,3,4,5 (indices or names); "
                                "default: drawn with --split-seed")
    num_known: int = setting(6, "how many known classes --split-seed draws when --known is not given")
    split_seed: int = setting(0, "which random open-set split (and train/val/test partition)")
    val_fraction: float = setting(0.1, "fraction of the known images for validation")
    test_fraction: float = setting(0.2, "fraction of the known images for the test")
    seed: int = setting(0, "seed for weights, batch order and augmentation")
    device: str = setting("cpu", "cpu | cuda | cuda:N")
    arch: str = setting("small_cnn", " | ".join(BACKBONES))
    width: float = setting(1.0, "channel width multiplier of the backbone")
    epochs: int = setting(30, "training epochs")
    min_steps: int = setting(0, "train at least this many SGD steps: a small (long-tailed) "
                             "training set runs more epochs than --epochs (0 = exactly --epochs)")
    batch_size: int = setting(64, "SGD batch size")
    lr: float = setting(0.05, "peak learning rate (warm-up, then cosine decay)")
    momentum: float = setting(0.9, "SGD (Nesterov) momentum")
    weight_decay: float = setting(5e-4, "weight decay of conv / linear weights")
    augment: str | None = setting(None, f"{' | '.join(AUGMENTATIONS)} (default: affine, "
                                  "affine-flip for RGB)")
    score: str | None = setting(None, "the head's unknown score: mls | msp (| distance for "
                                "rpl/arpl); default mls")
    temperature: float | None = setting(None, "softmax temperature T of the task loss (default: "
                                        "the method's, rpl 0.1, arpl 1.0)")
    accept_rate: float = setting(0.95, "threshold accepts this fraction of known validation images")
    reciprocal: ReciprocalConfig = section(ReciprocalConfig, "")
    detector: DetectorConfig = section(DetectorConfig, "")
    sla: SlaConfig = section(SlaConfig, "sla_")
    rkd: RkdConfig = section(RkdConfig, "rkd_")
    long_tail: LongTailConfig = section(LongTailConfig, "")
    images: ImagesConfig = section(ImagesConfig, "")
    transfer: TransferConfig = section(TransferConfig, "")

    @property
    def task(self) -> str:
        """The single-head method that trains the head this run ships (SLA distils into one)."""
        return self.sla.task if self.method == "sla" else self.method

    @property
    def head(self) -> str:
        return LOSSES[self.task].head

    def validate(self) -> None:
        """Reject bad settings before any work, with a message naming the flag."""
        check_choice("method", self.method, LOSSES)
        check_choice("arch", self.arch, BACKBONES)
        if self.augment is not None:
            check_choice("augment", self.augment, AUGMENTATIONS)
        self.sla.validate()
        scores = SCORES_OF_HEAD[self.head]
        if self.score is not None and self.score not in scores:
            raise UserError(f"--score {self.score!r} is not defined for {self.task}; "
                            f"choose from {', '.join(scores)}")
        positive({"epochs": self.epochs, "batch-size": self.batch_size, "lr": self.lr,
                  "width": self.width, **({} if self.temperature is None
                                          else {"temperature": self.temperature})})
        non_negative({"weight-decay": self.weight_decay, "momentum": self.momentum})
        for part in (self.reciprocal, self.detector, self.rkd, self.images):
            part.validate()
        self.transfer.validate(self.epochs)
        if not 0 < self.accept_rate <= 1:
            raise UserError(f"--accept-rate must be in (0, 1], got {self.accept_rate}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise UserError("--val-fraction and --test-fraction must be in (0, 1) with sum < 1")
        if self.batch_size < 2:
            raise UserError(f"--batch-size must be >= 2 (batch norm), got {self.batch_size}")
        if self.seed < 0 or self.split_seed < 0:
            raise UserError("--seed and --split-seed must be >= 0")
        if self.min_steps < 0:
            raise UserError(f"--min-steps must be >= 0, got {self.min_steps}")
        self.long_tail.validate(self.head, self.method, self.epochs)
        check_device(self.device)

    def check_world_size(self, world_size: int) -> None:
        """The settings that change meaning under torchrun with `world_size` processes."""
        if world_size == 1:
            return
        if self.batch_size % world_size:
            raise UserError(f"--batch-size {self.batch_size} is the global batch: it must split "
                            f"evenly over the {world_size} processes")
        if self.batch_size // world_size < 2:
            raise UserError(f"--batch-size {self.batch_size} leaves {self.batch_size // world_size} "
                            f"image(s) per process; BatchNorm needs >= 2")
        if self.device.startswith("cuda:"):
            raise UserError(f"--device {self.device} under torchrun: pass --device cuda (each "
                            "process uses cuda:LOCAL_RANK)")

    def resolved(self, in_channels: int) -> TrainConfig:
        """The settings left to the method's or the data's defaults filled in."""
        return self.override(
            score=DEFAULT_SCORE if self.score is None else self.score,
            temperature=(LOSSES[self.task].default_temperature if self.temperature is None
                         else self.temperature),
            augment=self.augment if self.augment is not None else default_augmentation(
                self.arch, in_channels))

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict:
        """{flag name with underscores: value}, e.g. {"sla_task": "softmax", "m2m": False}."""
        values = {}
        for item in SETTINGS:
            value = self
            for name in item.path:
                value = getattr(value, name)
            values[item.name] = value
        return values

    def override(self, **changes) -> TrainConfig:
        """A copy with settings replaced by their flat names: cfg.override(imbalance=10, m2m=True)."""
        unknown = sorted(set(changes) - SETTING_NAMES)
        if unknown:
            raise TypeError(f"unknown settings {unknown}")
        return from_flat({**self.flat(), **changes})

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """A config.json: nested as written today, or flat as written before the sections."""
        if not isinstance(saved.get("sla"), dict):  # the flat layout of earlier runs
            saved = {OLD_NAMES.get(key, key): value for key, value in saved.items()}
            return from_flat({k: v for k, v in saved.items() if k in SETTING_NAMES})
        return _build(cls, saved)


def default_augmentation(arch: str, in_channels: int) -> str:
    """photo (random resized crop, flip, colour jitter) for the ImageNet-style networks on
    colour images; small random affine moves otherwise (with flips for colour)."""
    if in_channels == 3:
        return "photo" if arch.startswith("imagenet_") else "affine-flip"
    return "affine"


@dataclass(frozen=True)
class Setting:
    """One command-line setting: its flat name (the flag), where it lives, type, default, help."""
    name: str
    path: tuple[str, ...]
    type: type  # bool | int | float | str (None allowed where the default is None)
    default: object
    help: str
    old_names: tuple[str, ...] = ()


def _settings(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    found = []
    for item in fields(cls):
        if "prefix" in item.metadata:
            found += _settings(item.default_factory, item.metadata["prefix"], path + (item.name,))
            continue
        name = item.metadata.get("flag") or prefix + item.name
        kind = next(t for t in (*typing.get_args(hints[item.name]), hints[item.name])
                    if t is not type(None))
        found.append(Setting(name, path + (item.name,), kind, item.default,
                             item.metadata.get("help", ""), item.metadata.get("old_names", ())))
    return found


def _build(cls: type, values: dict, path: tuple[str, ...] = ()):
    """A section from a nested dict; keys it lacks keep their defaults."""
    kwargs = {}
    for item in fields(cls):
        if item.name not in values:
            continue
        value = values[item.name]
        if "prefix" in item.metadata and not isinstance(value, dict):
            raise UserError(f"config section {item.name!r} must be a mapping, got {value!r}")
        kwargs[item.name] = (_build(item.default_factory, value) if "prefix" in item.metadata
                             else value)
    return cls(**kwargs)


def from_flat(values: dict) -> TrainConfig:
    """A TrainConfig from {flat name: value}; names it lacks keep their defaults."""
    nested: dict = {}
    for item in SETTINGS:
        if item.name in values:
            node = nested
            for name in item.path[:-1]:
                node = node.setdefault(name, {})
            node[item.path[-1]] = values[item.name]
    return _build(TrainConfig, nested)


SETTINGS = _settings(TrainConfig)
SETTING_NAMES = {item.name for item in SETTINGS}
OLD_NAMES = {old: item.name for item in SETTINGS for old in item.old_names}  # e.g. m2m_g


def check_device(name: str) -> None:
    """cpu, cuda or cuda:N where that device exists."""
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA device")
    if index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
