"""Decoders written the way users write them (no ``jacobian_chain()``), for the engine's benchmarks and tests.

* :class:`UserMNISTDecoder`: the Appendix D MNIST decoder as one would write it by hand: a
  ``forward`` that calls ``F.elu`` after a Linear and a BatchNorm1d, ``.view``s to 256×7×7, runs an
  ``nn.Sequential`` of ConvTranspose/BatchNorm/ELU layers and a final Conv, and crops
  ``[..., :28, :28]`` before ``torch.sigmoid``. Sizes: ConvT512,4,1 p1 → 8; ConvT256,4,1 p2 → 7;
  ConvT128,4,2 p1 → 14; ConvT64,4,2 p1 → 28; Conv1,4,1 p2 → 29, cropped to 28 (no BatchNorm after
  the last ConvT, as in :class:`gracheck.nets.MNISTDecoder`). ``width`` scales every channel count.
* :class:`MLPDecoder`: d-512-512-784 with ELU and a sigmoid output, the JAX comparison's network.

The Jacobian engine reaches its "chain" route for both by tracing their forward (torch.fx).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class UserMNISTDecoder(nn.Module):
    def __init__(self, d: int = 12, width: float = 1.0) -> None:
        super().__init__()
        c = [max(1, round(n * width)) for n in (256, 512, 256, 128, 64)]
        self.c0 = c[0]
        self.fc = nn.Linear(d, c[0] * 7 * 7)
        self.bn = nn.BatchNorm1d(c[0] * 7 * 7)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c[0], c[1], 4, 1, padding=1), nn.BatchNorm2d(c[1]), nn.ELU(),
            nn.ConvTranspose2d(c[1], c[2], 4, 1, padding=2), nn.BatchNorm2d(c[2]), nn.ELU(),
            nn.ConvTranspose2d(c[2], c[3], 4, 2, padding=1), nn.BatchNorm2d(c[3]), nn.ELU(),
            nn.ConvTranspose2d(c[3], c[4], 4, 2, padding=1), nn.ELU(),
            nn.Conv2d(c[4], 1, 4, 1, padding=2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.bn(self.fc(z)))
        h = h.view(-1, self.c0, 7, 7)
        x = self.deconv(h)
        return torch.sigmoid(x[..., :28, :28])


class MLPDecoder(nn.Module):
    def __init__(self, d: int = 12, hidden: int = 512, out: int = 784) -> None:
        super().__init__()
        self.l1 = nn.Linear(d, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.l3(F.elu(self.l2(F.elu(self.l1(z))))))
