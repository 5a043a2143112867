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
    # a small training set (a long tail) runs more epochs, to at least this many SGD steps
    min_steps: int = 0
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
    # post-hoc detector that decides `known` (models/detectors); none = the head's --score
    detector: str = "knn"
    knn_k: int = 1
    bank_size: int = 1024  # k-NN feature bank rows (a seeded subsample of the training split)
    accept_rate: float = 0.95  # threshold accepts this fraction of known validation images
    # SLA (--method sla): the shipped single-pass head is trained by --sla-task
    sla_task: str = "softmax"  # softmax | rpl | arpl
    sla_transform: str = "rotation"  # rotation (M = 4) | permutation (M = 6, RGB only)
    sla_temperature: float = 1.0  # self-distillation temperature T
    sla_aggregate_loss: bool = False  # also CE(s, y) on the aggregated logits (official option)
    # RKD: distil a (smaller) student from a finished run directory
    teacher: str | None = None
    rkd_distance_weight: float = 25.0
    rkd_angle_weight: float = 50.0
    # long-tailed
    imbalance: float = 1.0  # rho = n_max / n_min of the training split; 1 = as loaded
    imbalance_order: str | None = None  # classes most frequent first; None = known-class order
    loss: str = "ce"  # ce | cb-softmax | cb-sigmoid | cb-focal: the classification term
    cb_beta: float = 0.999  # effective-number beta of the class-balanced losses, in [0, 1)
    focal_gamma: float = 1.0
    logit_adjust: float = 0.0  # tau of logit-adjusted CE (Menon et al. 2021); 0 = off
    drs: bool = False  # deferred class-balanced re-sampling from --drs-start of the epochs
    drs_start: float = 0.667
    m2m: bool = False  # M2m: translate majority seeds into minority samples
    m2m_g: str | None = None  # run directory of the CE classifier g; None = train it first
    m2m_start_epoch: int = 20  # class-balanced re-sampling + generation from this epoch (0-based)
    m2m_beta: float = 0.999
    m2m_lambda: float = 0.5
    m2m_gamma: float = 0.9
    m2m_eta: float = 0.1
    m2m_steps: int = 10

    def to_dict(self) -> dict:
        return asdict(self)
