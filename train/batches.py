"""Index batches -> uint8 image tensors, from an in-memory array or by DataLoader workers.

In-memory images (numpy arrays or tensors) are indexed directly. File images that did not fit
the cache (data/image_files.FileImages) are decoded by `images.workers` DataLoader processes
(0: in this process). Decoding is deterministic and augmentation happens afterwards on the
batch, so a run reads the same pixels and trains the same way with any number of workers.
One persistent DataLoader per file dataset serves every subset of it (train, val, test), so
its workers start once per run.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.image_files import FileImages


class _Files(Dataset):
    """Every file of a file dataset, by file id (what the subsets' `ids` hold)."""

    def __init__(self, images: FileImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images.files)

    def __getitem__(self, file_id: int) -> torch.Tensor:
        return torch.from_numpy(self.images.load_file(file_id))


class _Batches:
    """The batch sampler: whatever index batches the next pass asks for."""

    def __init__(self):
        self.batches: Sequence[Sequence[int]] = ()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


EVAL_PIXELS = 2**24  # values per inference batch: 512 images up to 3 x 32 x 32, fewer when larger


def eval_batch_size(images, most: int = 512) -> int:
    """Images per inference batch: `most`, fewer for large inputs (activation memory grows
    with H x W: 512 photos at 160 px would need gigabytes)."""
    return int(max(8, min(most, EVAL_PIXELS // int(np.prod(images.shape[1:])))))


_LOADERS: dict[int, DataLoader] = {}  # id(cache) -> the dataset's loader, until release_loaders()


def _loader(images: FileImages) -> DataLoader:
    """The file dataset's one loader (keyed by its cache, which every subset shares). Forked
    workers inherit the shared cache mapping; nothing is pickled."""
    key = id(images.cache)
    if key not in _LOADERS:
        _LOADERS[key] = DataLoader(_Files(images), batch_sampler=_Batches(),
                                   num_workers=images.workers, persistent_workers=True,
                                   prefetch_factor=4, multiprocessing_context="fork")
    return _LOADERS[key]


def release_loaders() -> None:
    """Stop every loader's worker processes (the end of a run)."""
    for loader in _LOADERS.values():
        iterator = loader._iterator  # the persistent workers live in it; DataLoader has no close()
        if iterator is not None:
            iterator._shutdown_workers()
    _LOADERS.clear()


def read_batches(images, batches: Sequence[Sequence[int] | torch.Tensor]) -> Iterator[torch.Tensor]:
    """uint8 B x C x H x W tensors of `images[batch]`, for each batch in order."""
    if isinstance(images, FileImages) and images.workers > 0:
        loader = _loader(images)
        loader.batch_sampler.batches = [images.ids[np.asarray(b)].tolist() for b in batches]
        yield from loader
        return
    for batch in batches:
        if isinstance(images, torch.Tensor):
            yield images[batch]
        else:
            yield torch.from_numpy(np.ascontiguousarray(images[np.asarray(batch)]))


def read_all(images, batch_size: int) -> Iterator[torch.Tensor]:
    """The whole set in order, `batch_size` images at a time."""
    yield from read_batches(images, [range(start, min(start + batch_size, len(images)))
                                     for start in range(0, len(images), batch_size)])
