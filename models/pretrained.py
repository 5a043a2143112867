"""Pretrained backbone weights: a torchvision state dict or one of our own runs' model.pt.

Accepted files (torch.save'd, read with weights_only=True):
    a torchvision state dict    conv1.weight, bn1.running_mean, ..., fc.weight, fc.bias
    the same wrapped            {"state_dict": {...}} or {"model": {...}}
    a run checkpoint            rundir.py's model.pt: {"model_spec", "state_dict", ...}; only the
                                "backbone." keys are taken (prefix stripped)
The ImageNet head `fc.*` (and a run's head.*, mean, std, detector.*) is dropped: the head is ours.
Every check runs before anything is copied, so a failed load leaves the network untouched.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from models.imagenet_resnet import ImageNetResNet

BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "fc."  # torchvision's ImageNet classifier
# torch < 0.4.1 saved BatchNorm without this counter (torchvision's first ResNet files); it only
# matters for momentum=None, so a file without it keeps the network's own
OPTIONAL_SUFFIX = "num_batches_tracked"


class PretrainedError(ValueError):
    """A weights file that cannot be loaded into the backbone; the one-line message names the file."""


def load_pretrained(backbone: nn.Module, path: str | Path) -> dict:
    """Load the weights in `path` into `backbone` in place.

    Returns {"source": "torchvision" | "run checkpoint", "loaded": tensors copied from the file,
    "ignored": keys of the file dropped (the head)}.
    """
    weights, source, ignored = _backbone_weights(_read(path), path)
    _check(backbone, weights, path, source)
    loaded = len(weights)
    own = backbone.state_dict()
    weights = {key: weights.get(key, own[key]) for key in own}
    backbone.load_state_dict(weights)
    return {"source": source, "loaded": loaded, "ignored": ignored}


def _read(path: str | Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise PretrainedError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights_only errors have no common base
        # any unreadable bytes fail as "Weights only load failed"; a zip of torch.save did hold objects
        if zipfile.is_zipfile(path) and "Weights only load failed" in str(exc):
            raise PretrainedError(f"{path} holds pickled objects, not only tensors "
                                  f"(a whole torch.save(model)? save model.state_dict())") from None
        raise PretrainedError(f"{path} is not a PyTorch weights file ({type(exc).__name__})") from None


def _backbone_weights(content: object, path: str | Path) -> tuple[dict, str, list[str]]:
    """The file's backbone tensors by the backbone's own names, its source, and the dropped keys."""
    if not isinstance(content, dict):
        raise PretrainedError(f"{path} holds a {type(content).__name__}, not a state dict")
    is_run = "model_spec" in content
    for wrapper in ("state_dict", "model"):
        if isinstance(content.get(wrapper), dict):
            content = content[wrapper]
            break
    if not content or not all(isinstance(key, str) for key in content):
        raise PretrainedError(f"{path} is not a state dict (no parameter names)")
    if is_run or any(key.startswith(BACKBONE_PREFIX) for key in content):  # our classifier's
        weights = {key[len(BACKBONE_PREFIX):]: value for key, value in content.items()
                   if key.startswith(BACKBONE_PREFIX)}
        ignored = [key for key in content if not key.startswith(BACKBONE_PREFIX)]
        return weights, "run checkpoint", ignored
    weights = {key: value for key, value in content.items() if not key.startswith(HEAD_PREFIX)}
    return weights, "torchvision", [key for key in content if key.startswith(HEAD_PREFIX)]


def _check(backbone: nn.Module, weights: dict, path: str | Path, source: str) -> None:
    """The first problem, in the backbone's key order, as a PretrainedError; then unexpected keys."""
    own = backbone.state_dict()
    for key, expected in own.items():
        if key not in weights:
            if key.endswith(OPTIONAL_SUFFIX):
                continue
            raise PretrainedError(f"{path} has no weight for {key} ({_layout(backbone, source)})")
        value = weights[key]
        if not isinstance(value, torch.Tensor):
            raise PretrainedError(f"{key} in {path} is a {type(value).__name__}, not a tensor")
        if value.shape != expected.shape:
            raise PretrainedError(f"{key} is {list(value.shape)} in {path}, "
                                  f"the network has {list(expected.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise PretrainedError(f"{key} in {path} has non-finite values (NaN or inf)")
    for key in weights:
        if key not in own:
            raise PretrainedError(f"{path}: unexpected key {key}: weights of another architecture?")


def _layout(backbone: nn.Module, source: str) -> str:
    """What the file was expected to hold, for the missing-key message."""
    if isinstance(backbone, ImageNetResNet):
        name = f"imagenet_resnet{backbone.depth}"
        return f"the torchvision layout of {name}" if source == "torchvision" else f"the layout of {name}"
    return f"the layout of {type(backbone).__name__}"

