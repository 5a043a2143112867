"""Deep nearest-neighbour unknown score (Sun, Ming, Zhu & Li, ICML 2022).

A bank of N_b known-class training embeddings, each L2-normalised, B = [b_1 .. b_Nb]. For an
embedding z with u = z / ||z||:
    s(z) = -(k-th largest cosine similarity u . b_j)
i.e. the distance to the k-th nearest bank vector (higher = more unknown). Inside the ONNX
graph this is one MatMul (B x D @ D x N_b) and one TopK. The bank is a seeded subsample of the
training embeddings (bank_size rows at most), so the file size stays bounded.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class KnnScore(nn.Module):
    def __init__(self, embed_dim: int, bank_size: int, k: int = 1):
        super().__init__()
        if bank_size < 1 or not 1 <= k <= bank_size:
            raise ValueError(f"k-NN needs 1 <= k <= bank size, got k={k}, bank size {bank_size}")
        self.k = k
        self.register_buffer("bank", torch.zeros(bank_size, embed_dim))  # N_b x D, unit rows

    def fit(self, train: dict[str, torch.Tensor], labels: torch.Tensor,
            val: dict[str, torch.Tensor], seed: int = 0) -> KnnScore:
        """Fill the bank with a seeded subsample of the training embeddings (all if fewer)."""
        embedding = train["embedding"]
        if len(embedding) < self.k:
            raise ValueError(f"k-NN with k={self.k} needs at least {self.k} training images, "
                             f"got {len(embedding)}")
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(embedding), generator=generator)[:len(self.bank)].sort().values
        self.bank = F.normalize(embedding[keep].float(), dim=1).to(self.bank.device)
        return self

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        unit = F.normalize(outputs["embedding"], dim=1)  # B x D
        similarity = unit @ self.bank.t()  # B x N_b
        return -similarity.topk(self.k, dim=1).values[:, -1]  # B
