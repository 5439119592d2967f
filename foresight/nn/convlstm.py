"""Convolutional LSTM (Shi et al., 2015): an LSTM whose gates are 2-D convolutions over feature maps.

Used by GHVAE's prior and posterior inference networks, which must be recurrent *and* keep the spatial layout
of the latent grid. The state of a cell is ``(h, c)``, each ``[B, hidden, H, W]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConvLSTMCell"]

State = tuple[Tensor, Tensor]


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: ``(x [B, in, H, W], state) -> (h [B, hidden, H, W], new state)``.

    All four gates come from one convolution over ``cat(x, h)``. The forget-gate bias starts at 1 so the cell
    remembers by default early in training (Jozefowicz et al., 2015).
    """

    def __init__(self, *, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels:2 * hidden_channels].fill_(1.0)  # forget gate

    def initial_state(self, x: Tensor) -> State:
        b, _, h, w = x.shape
        zeros = x.new_zeros(b, self.hidden_channels, h, w)
        return zeros, zeros

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvLSTMCell: expected input [B, {self.in_channels}, H, W], got {list(x.shape)}")
        h, c = self.initial_state(x) if state is None else state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)  # each [B, hidden, H, W]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)

