"""The resolved training configuration: a frozen dataclass written next to every run."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainConfig:
    method: str = "arpl"  # softmax | rpl | arpl | sla
    dataset: str = "mnist5k"
    out: str = "runs/default"
    known: str | None = None  # "0,1,2,3,4,5"; None draws `num_known` classes with split_seed
    num_known: int = 6
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    arch: str = "small_cnn"
    width: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str | None = None  # none | affine | affine-flip; None = the dataset's default
    score: str | None = None  # served unknown score; None = the method's default
    temperature: float | None = None  # None = the method's default (rpl 0.1, arpl 1.0)
    open_space_weight: float = 0.1
    points_per_class: int = 4
    feature_scale: float = 8.0  # > 0: L2-normalise the embedding to this norm (rpl/arpl)
    accept_rate: float = 0.95  # threshold accepts this fraction of known validation images
    # SLA (--method sla): the shipped single-pass head is trained by --sla-task
    sla_task: str = "softmax"  # softmax | rpl | arpl
    sla_transform: str = "rotation"  # rotation (M = 4) | permutation (M = 6, RGB only)
    sla_temperature: float = 1.0  # self-distillation temperature T
    # RKD: distil a (smaller) student from a finished run directory
    teacher: str | None = None
    rkd_distance_weight: float = 25.0
    rkd_angle_weight: float = 50.0

    def to_dict(self) -> dict:
        return asdict(self)
