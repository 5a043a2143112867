"""M2m: major-to-minor translation (Kim, Jeong & Shin, CVPR 2020), as a batch hook of fit().

A fixed steering classifier g (`steering`, from the generator run), trained with plain CE on
the same imbalanced data, and the classifier f (`classifier`) being trained. From `start_epoch`
on, every batch is re-drawn class-balanced (the official code's switch to an over-sampled
loader); a slot of class k becomes a generation slot with probability 1 - N_k / N_max. For it a
seed class k0 ~ Q(k0 | k) ∝ 1 - beta^max(N_k0 - N_k, 0) and a seed image x0 of class k0 are
drawn, and

    x* = argmin_{x = x0 + delta} CE(g(x), k) + lambda * f_k0(x)

(lambda = `seed_weight`) is approximated from x0 + noise (L2 <= 0.5) by T normalised-gradient
steps of size eta (`step_size`), clipped to [0, 1]. x* replaces the slot's real (over-sampled)
image only if softmax(g(x*))_k >= gamma (`accept_confidence`) and a
Bernoulli(1 - beta^max(N_k0 - N_k, 0)) draw succeeds.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cli_errors import UserError
from rundir import RunDirectory
from train.checkpoints import load_fitting_classifier
from train.config import M2mConfig, TrainConfig
from train.drs import class_members, draw_images


def acceptance_probability(counts: Sequence[int], beta: float) -> torch.Tensor:
    """P[k, k0] = 1 - beta^max(N_k0 - N_k, 0): K x K, rows = target class k, cols = seed k0."""
    n = torch.as_tensor(counts, dtype=torch.float64)  # K
    gap = (n[None, :] - n[:, None]).clamp(min=0)  # K x K, N_k0 - N_k
    return (1 - beta ** gap).float()


def generation_probability(counts: Sequence[int]) -> torch.Tensor:
    """1 - N_k / N_max: the chance that a slot of class k is generated, K."""
    n = torch.as_tensor(counts, dtype=torch.float32)
    return 1 - n / n.max()


def random_l2_noise(like: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise in [-0.5, 0.5] per pixel, rescaled per sample to L2 norm <= radius."""
    noise = torch.rand(like.shape, generator=generator).to(like) - 0.5  # B x C x H x W
    norms = noise.flatten(1).norm(dim=1).clamp(min=1e-12)  # B
    return noise * (radius / norms).clamp(max=1).view(-1, 1, 1, 1)


def translate(steering: nn.Module, classifier: nn.Module, seeds: torch.Tensor,
              seed_classes: torch.Tensor, targets: torch.Tensor, seed_weight: float,
              step_size: float, steps: int, generator: torch.Generator) -> torch.Tensor:
    """x* ~ argmin_x CE(g(x), k) + lambda * f_k0(x) from x0 + noise; B x C x H x W in [0, 1].

    Both networks are used as they are (put them in eval mode first); only x is optimised."""
    x = (seeds + random_l2_noise(seeds, 0.5, generator)).clamp(0, 1)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        seed_logit = classifier(x)["logits"].gather(1, seed_classes[:, None]).mean()  # f_k0(x)
        objective = F.cross_entropy(steering(x)["logits"], targets) + seed_weight * seed_logit
        grad, = torch.autograd.grad(objective, [x])  # B x C x H x W
        norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        x = (x - step_size * grad / norms).clamp(0, 1)
    return x.detach()


class MajorToMinor:
    """fit()'s batch hook: (epoch, x, y) -> the batch to train on, with M2m samples in it.

    Holds the training set (uint8 N x C x H x W, labels N) to re-draw class-balanced batches
    and seeds, and counts per class how many samples it generated and accepted."""

    def __init__(self, steering: nn.Module, classifier: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor, settings: M2mConfig, augmentation: str, seed: int):
        self.steering = steering.eval().requires_grad_(False)
        self.classifier = classifier
        self.images, self.labels = images, labels
        self.settings = settings
        self.augmentation = augmentation
        self.generator = torch.Generator().manual_seed(seed + 7919)
        num_classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=num_classes)
        self.members = class_members(labels)
        self.p_generate = generation_probability(counts.tolist())  # K
        self.p_accept = acceptance_probability(counts.tolist(), settings.beta)  # K x K
        self.generated = torch.zeros(num_classes, dtype=torch.long)
        self.accepted = torch.zeros(num_classes, dtype=torch.long)

    def draw(self, classes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """One random augmented training image of each given class, on like's device."""
        return draw_images(self.images, self.members, classes, self.augmentation, self.generator,
                           like)

    def __call__(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch < self.settings.start_epoch:
            return x, y
        num_classes = len(self.members)
        targets = torch.randint(num_classes, (len(y),), generator=self.generator)  # balanced
        real = self.draw(targets, x)  # B x C x H x W: the over-sampled real images
        slots = torch.bernoulli(self.p_generate[targets], generator=self.generator).nonzero().view(-1)
        # a target class whose every seed class is as rare as itself has nothing to draw from
        slots = slots[self.p_accept[targets[slots]].sum(1) > 0]
        if len(slots):
            generated, accept = self.generate(targets[slots], x)
            real[slots[accept]] = generated[accept.to(x.device)]
        return real.contiguous(memory_format=torch.channels_last), targets.to(y.device)

    def generate(self, targets: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x*, accepted): B generated images of the target classes and the B acceptance mask."""
        s = self.settings
        p_pair = self.p_accept[targets]  # B x K, also Q(k0 | k) up to normalisation
        seed_classes = torch.multinomial(p_pair, 1, generator=self.generator).squeeze(1)  # B
        seeds = self.draw(seed_classes, like)
        device = like.device
        was_training = self.classifier.training
        self.classifier.eval()
        generated = translate(self.steering, self.classifier, seeds, seed_classes.to(device),
                              targets.to(device), s.seed_weight, s.step_size, s.steps, self.generator)
        self.classifier.train(was_training)
        with torch.no_grad():
            confidence = torch.softmax(self.steering(generated)["logits"], 1)  # B x K
        confident = (confidence.gather(1, targets.to(device)[:, None]).squeeze(1).cpu()
                     >= s.accept_confidence)
        lucky = torch.bernoulli(p_pair.gather(1, seed_classes[:, None]).squeeze(1),
                                generator=self.generator).bool()
        accept = confident & lucky  # B
        self.generated += torch.bincount(targets, minlength=len(self.members))
        self.accepted += torch.bincount(targets[accept], minlength=len(self.members))
        return generated, accept

    def summary(self, class_names: Sequence[str], train_counts: Sequence[int]) -> dict:
        """Per class: training count, samples generated (attempted) and accepted."""
        return {name: {"train_count": int(n), "generated": int(self.generated[k]),
                       "accepted": int(self.accepted[k])}
                for k, (name, n) in enumerate(zip(class_names, train_counts))}


def load_steering(run_dir: str, class_names: Sequence[str], input_shape: Sequence[int]) -> nn.Module:
    """The fixed classifier g from a plain-CE run directory that fits this run's data."""
    flag = "--m2m-generator-run"
    steering, checkpoint = load_fitting_classifier(run_dir, flag, class_names, input_shape)
    directory = RunDirectory(run_dir)
    saved = (TrainConfig.from_dict(directory.read_config()) if directory.config_path.is_file()
             else TrainConfig(method=checkpoint.method))
    loss = saved.long_tail.loss
    if saved.long_tail.logit_adjust > 0 or saved.long_tail.drs:
        loss = "ce with --logit-adjust / --drs"
    if checkpoint.method != "softmax" or loss != "ce":
        raise UserError(f"{flag} {run_dir}: it must be a plain-CE softmax run, "
                        f"this one is {checkpoint.method!r} with --loss {loss}")
    return steering
