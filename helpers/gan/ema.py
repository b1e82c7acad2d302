"""An exponential moving average of the generator, updated without waiting for the device.

Karras et al. ("Progressive Growing of GANs", ICLR 2018) and Yazıcı et al. ("The Unusual
Effectiveness of Averaging in GAN Training", ICLR 2019): sampling from an average of the
generator's recent weights gives better images than its last weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A copy of ``model`` whose weights and buffers follow ``model``'s as an exponential moving
    average: after ``n`` updates, ``avg += (current - avg) * (1 - beta)`` with
    ``beta = min(decay, (1 + n) / (10 + n))`` (a warm-up, so a short run is not dominated by
    the initial weights); the first update copies.

    The numbers and the checkpoint layout (``module.*`` and ``n_averaged``) are those of
    torch's ``AveragedModel`` with that ``avg_fn``, which this replaces: ``AveragedModel`` read
    its counter back from the device for every tensor (``float(n)``), about a hundred host-device
    synchronisations per GAN step on a GPU. Here the count is kept on the host and the update is
    three ``torch._foreach_*`` calls with a Python scalar (sub, mul, add rather than
    ``_foreach_lerp_``, whose other rounding would change the CPU's committed results).
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model)
        self.decay = float(decay)
        # on the CPU, as AveragedModel keeps it; ``count`` is its host-side mirror
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))
        self.count = 0

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def beta(self) -> float:
        """The decay of the next update (the warm-up's, until it reaches ``decay``)."""
        n = float(self.count)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s parameters and buffers (same architecture, same
        device). No ``.item()``, no host-device copy: nothing waits for the device."""
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.count == 0:
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)
        else:
            weight = 1.0 - self.beta()
            pairs = list(zip(averaged, current, strict=True))
            floats = [(a, c) for a, c in pairs if a.is_floating_point()]
            if floats:
                avg_f, cur_f = map(list, zip(*floats))
                step = torch._foreach_sub(cur_f, avg_f)
                torch._foreach_mul_(step, weight)
                torch._foreach_add_(avg_f, step)
            for avg, cur in pairs:  # integer buffers (batch norm's counter): AveragedModel's arithmetic
                if not avg.is_floating_point():
                    avg.copy_(avg + (cur - avg) * weight)
        self.n_averaged += 1
        self.count += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.count = int(self.n_averaged)  # once per load; the buffer lives on the CPU
