"""A model whose ``forward`` is decorated twice, as transformers decorates GPT-2's."""

from __future__ import annotations

import torch
from pdeco import as_dict, checked


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, 32)

    @checked
    @checked
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.b = torch.nn.Linear(32, 8)

    @as_dict
    @checked
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.block(x))
