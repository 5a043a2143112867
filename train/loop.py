"""The training loop: SGD with warm-up + cosine decay, model selection on validation accuracy."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from train.augment import augment
from train.batches import eval_batch_size, read_all, read_batches
from train.distributed import (SINGLE, Context, epoch_order, rank_seed, shard_report,
                               shard_size, weights_checksum)


def _as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x C x H x W -> float [0, 1], channels-last (faster convolutions on CPU)."""
    x = images.to(device).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm layers, reciprocal points and the radius."""
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            is_conv_or_fc = param.ndim > 1 and not name.endswith("points")
            (decay if is_conv_or_fc else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _sgd_with_schedule(modules: list[nn.Module], lr: float, momentum: float, weight_decay: float,
                       total: int, warmup: int) -> tuple[torch.optim.Optimizer, object]:
    """Nesterov SGD; linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    optimizer = torch.optim.SGD(_param_groups(modules, weight_decay), lr=lr, momentum=momentum,
                                nesterov=momentum > 0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total))))
    return optimizer, schedule


def _forward(model: nn.Module, x: torch.Tensor, teacher: nn.Module | None) -> dict[str, torch.Tensor]:
    """The model's outputs, plus a frozen teacher's embedding of the same inputs (RKD)."""
    outputs = model(x)
    if teacher is not None:
        with torch.no_grad():
            outputs["teacher_embedding"] = teacher(x)["embedding"]
    return outputs


def _parallel(model: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """The module the training steps call: DDP over `model` under torchrun, else `model`."""
    if not ctx.active:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _place(device: torch.device, model: nn.Module, teacher: nn.Module | None) -> None:
    """Both on the device in channels-last layout (faster convolutions on CPU); the teacher
    in eval mode (frozen)."""
    model.to(device).to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device).to(memory_format=torch.channels_last).eval()


def _epoch_row(model: nn.Module, val: tuple[torch.Tensor, torch.Tensor], device: torch.device,
               ctx: Context, epoch: int, running: float, order: torch.Tensor, n: int) -> dict:
    """The epoch's history row: the loss summed over every shard per training image, the
    validation accuracy (with rank 0's BatchNorm statistics on every rank) and, under DDP,
    the shards' report."""
    running = ctx.sum(torch.tensor([running], dtype=torch.float64)).item()
    ctx.sync_buffers(model)
    row = {"epoch": epoch + 1, "loss": running / n, "val_acc": accuracy(model, *val, device)}
    if ctx.active:
        row["shards"] = shard_report(ctx.gather(order), n, ctx.gather(weights_checksum(model)))
    return row


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             device: torch.device, batch_size: int | None = None) -> float:
    model.eval()
    batch_size = batch_size or eval_batch_size(images)
    correct = 0
    for start, batch in zip(range(0, len(images), batch_size), read_all(images, batch_size)):
        logits = model(_as_input(batch, device))["logits"]
        correct += (logits.argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    return correct / max(1, len(images))


def _backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Head-only epochs (--head-epochs): the backbone's BatchNorm statistics stay as loaded."""
    if frozen:
        model.backbone.eval()


def fit(model: nn.Module, loss_fn: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor], *, epochs: int, batch_size: int, lr: float,
        momentum: float, weight_decay: float, augmentation: str, seed: int,
        device: torch.device, progress: bool = True,
        views: Callable[[torch.Tensor], torch.Tensor] | None = None,
        teacher: nn.Module | None = None,
        batch_hook: Callable[[int, torch.Tensor, torch.Tensor],
                             tuple[torch.Tensor, torch.Tensor]] | None = None,
        ctx: Context = SINGLE, head_epochs: int = 0) -> list[dict]:
    """Train in place; leave `model` at the epoch with the best validation accuracy (latest on ties).

    The first `head_epochs` epochs train everything but the backbone (its weights get no step,
    its BatchNorm statistics stay): a new head on pretrained features before fine-tuning.
    `train` / `val` images are uint8 tensors, or file images read by DataLoader workers
    (train/batches.py).
    batch_hook(epoch, x, y) -> (x, y), if given, replaces each augmented batch (e.g. M2m);
    `views` then expands it before the forward pass (SLA's M transformed copies), and a frozen
    `teacher` adds its embedding of the same inputs as outputs["teacher_embedding"].
    Under torchrun (`ctx`), `batch_size` is the global batch: each process trains a disjoint
    shard with batch_size / world_size images a step (train/distributed.py).
    """
    images, labels = train
    _place(device, model, teacher)
    loss_fn.to(device)
    trained = _parallel(model, ctx, device)
    batch_size //= ctx.world_size
    steps_per_epoch = math.ceil(shard_size(len(images), ctx) / batch_size)
    optimizer, schedule = _sgd_with_schedule([model, loss_fn], lr, momentum, weight_decay,
                                             epochs * steps_per_epoch, steps_per_epoch)
    generator = torch.Generator().manual_seed(rank_seed(seed, ctx.rank))
    best_acc, best_state, history = -1.0, None, []
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not (progress and ctx.is_main),
               leave=False)
    backbone = list(model.backbone.parameters()) if head_epochs else []
    for epoch in bar:
        model.train()
        _backbone_frozen(model, epoch < head_epochs)
        order = epoch_order(len(images), epoch, seed, ctx, generator)
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)
                   if len(order[start:start + batch_size]) >= 2]  # BatchNorm needs two samples
        running = 0.0
        for idx, batch in zip(batches, read_batches(images, batches)):
            x = augment(_as_input(batch, device), augmentation, generator)
            y = labels[idx].to(device)
            if batch_hook is not None:
                x, y = batch_hook(epoch, x, y)
            if views is not None:
                x = views(x)
            loss = loss_fn(_forward(trained, x, teacher), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if epoch < head_epochs:
                for param in backbone:  # SGD skips a parameter without a gradient entirely
                    param.grad = None
            optimizer.step()
            schedule.step()
            running += loss.item() * len(idx)
        history.append(_epoch_row(model, val, device, ctx, epoch, running, order, len(images)))
        val_acc = history[-1]["val_acc"]
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val_acc=f"{val_acc:.4f}")
        if val_acc >= best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
    return history
