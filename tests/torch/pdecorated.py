"""A model as transformers writes GPT-2's: ``forward`` decorated twice, and the loss
taken through a property getter that breaks the graph (``PreTrainedModel.loss_function``
logs a warning), so dynamo compiles the getter as a frame of its own."""

from __future__ import annotations

import torch
from pdeco import as_dict, checked


def mean_square(y: torch.Tensor) -> torch.Tensor:
    return (y * y).mean()


def mean_abs(y: torch.Tensor) -> torch.Tensor:  # what a test edits the getter to return
    return y.abs().mean()


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

    @property
    def loss_function(self) -> object:
        torch._dynamo.graph_break()  # as transformers' logger.warning_once
        return mean_square

    @as_dict
    @checked
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.b(self.block(x))
        return y, self.loss_function(y)
