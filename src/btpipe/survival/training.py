"""The one training loop of the survival networks (MLPs, slice-bag models, 3-D CNNs, distillation).

:func:`fit_network` runs AdamW over epochs; the model supplies how an epoch is cut into
batches and what a batch's loss is (or that the batch carries no signal and is skipped).
Everything random is seeded by the caller, so a fit is a pure function of its seed.
"""

from __future__ import annotations

import contextlib

import numpy as np


def _torch():
    import torch

    return torch


@contextlib.contextmanager
def torch_threads(n):
    """Run with ``n`` torch threads (None: leave the process setting), then restore: small
    nets are fastest single-threaded (measured 25x faster than 2 threads on a busy 2-core machine)."""
    if not n:
        yield
        return
    torch = _torch()
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hidden_layers(n_in, hidden, dropout):
    """(Linear-ReLU-Dropout layers of widths ``hidden``, the last width); no layer for no width."""
    torch = _torch()
    layers, width = [], n_in
    for h in hidden or ():
        layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = int(h)
    return layers, width


def mlp(n_in, hidden, dropout, n_out):
    """Linear-ReLU-Dropout layers of widths ``hidden`` (none: one linear map), then ``n_out``."""
    torch = _torch()
    layers, width = hidden_layers(n_in, hidden, dropout)
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, n_out))


def minibatches(n, batch_size, rng):
    """Index batches of one epoch: every row in one batch when ``batch_size`` covers them (no
    shuffle, no draw from ``rng``), else a shuffled split."""
    if batch_size is None or batch_size >= n:
        yield np.arange(n)
        return
    yield from shuffled_batches(n, batch_size, rng)


def shuffled_batches(n, batch_size, rng):
    """Index batches of one epoch in a random order drawn from ``rng`` (a permutation each epoch)."""
    perm = rng.permutation(n)
    for start in range(0, n, int(batch_size)):
        yield perm[start:start + int(batch_size)]


def fit_network(parameters, lr, weight_decay, epochs, epoch_batches, batch_loss,
                start_epoch=None, end_epoch=None, scaler=None) -> list[float]:
    """Train with AdamW and return the history (one value per epoch).

    ``epoch_batches()`` yields the index batches of one epoch; ``batch_loss(idx)`` returns the
    batch's loss tensor, or None to skip a batch without signal (e.g. no death). ``start_epoch()``
    runs before each epoch (train modes); the epoch's history value is the summed loss, or what
    ``end_epoch(summed loss)`` returns (e.g. a validation loss). ``scaler``: a CUDA GradScaler
    for mixed precision (a disabled one on the CPU is the plain step).
    """
    torch = _torch()
    opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
    history = []
    for _ in range(int(epochs)):
        if start_epoch is not None:
            start_epoch()
        total = 0.0
        for idx in epoch_batches():
            loss = batch_loss(idx)
            if loss is None:
                continue
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach())
        history.append(total if end_epoch is None else end_epoch(total))
    return history
