"""Training losses of the deep survival models (PyTorch).

- :func:`cox_partial_likelihood`: negative Cox log partial likelihood with
  Breslow (default, as scikit-survival) or Efron ties.
- :func:`deephit_loss`: single-risk DeepHit on a discrete time grid: likelihood
  of the observed bin (event) or of surviving past the censoring bin, plus the
  ranking loss exp(-(F_i(s_i) - F_j(s_i)) / sigma) over comparable pairs.
"""

from __future__ import annotations

import numpy as np


def _torch():
    import torch

    return torch


def tie_structure(time, event):
    """Integer structure for the partial likelihood (numpy, no gradients needed).

    Returns (order, risk_start, group, rank, group_size): subjects sorted by
    descending time; ``risk_start[p]`` is the last sorted position whose time
    equals that of position p (so positions 0..risk_start[p] form the risk
    set); for events, ``group`` is the tie group (distinct event time),
    ``rank`` the index l within it and ``group_size`` its number of events d.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    order = np.argsort(-time, kind="stable")
    t_sorted = time[order]
    risk_end = np.searchsorted(-t_sorted, -t_sorted, side="right") - 1
    e_sorted = event[order]
    _, group = np.unique(t_sorted, return_inverse=True)
    rank = np.zeros(len(time), dtype=int)
    size = np.zeros(len(time), dtype=int)
    positions = np.nonzero(e_sorted)[0]
    if positions.size:
        g = group[positions]  # contiguous runs: times are sorted
        starts = np.r_[True, g[1:] != g[:-1]]
        run_start = np.maximum.accumulate(np.where(starts, np.arange(g.size), 0))
        rank[positions] = np.arange(g.size) - run_start
        size[positions] = np.bincount(g)[g]
    return order, risk_end, group, rank, size


def cox_partial_likelihood(risk, time, event, ties="breslow", reduction="mean"):
    """Negative Cox log partial likelihood of ``risk`` (torch tensor, log hazard ratios).

    Breslow: -sum_i [eta_i - log sum_{T_j >= T_i} exp(eta_j)] over events i.
    Efron: the l-th of d tied events at a time uses
    log(sum_R exp(eta) - l/d * sum_D exp(eta)) with D the tied events.
    ``reduction`` 'mean' divides by the number of events, 'sum' does not.
    """
    torch = _torch()
    if ties not in ("breslow", "efron"):
        raise ValueError(f"ties must be 'breslow' or 'efron', got {ties!r}")
    event = np.asarray(event, dtype=bool)
    n_events = int(event.sum())
    if n_events == 0:
        return risk.sum() * 0.0
    order, risk_end, group, rank, size = tie_structure(time, event)
    eta = risk.reshape(-1)[torch.as_tensor(order)]
    shift = eta.detach().max()
    w = torch.exp(eta - shift)
    cum = torch.cumsum(w, dim=0)
    risk_sum = cum[torch.as_tensor(risk_end)]
    e_sorted = torch.as_tensor(event[order])
    if ties == "efron":
        tied = torch.zeros(int(group.max()) + 1, dtype=w.dtype)
        tied = tied.index_add(0, torch.as_tensor(group[event[order]]), w[e_sorted])
        frac = torch.as_tensor(rank / np.maximum(size, 1), dtype=w.dtype)
        risk_sum = risk_sum - frac * tied[torch.as_tensor(group)]
    terms = (eta - shift - torch.log(risk_sum))[e_sorted]
    loss = -terms.sum()
    return loss / n_events if reduction == "mean" else loss


def bin_index(grid, time) -> np.ndarray:
    """DeepHit bin of each time: bin k covers (grid[k-1], grid[k]]; len(grid) = beyond the grid."""
    return np.searchsorted(np.asarray(grid, dtype=float), np.asarray(time, dtype=float), side="left")


def deephit_loss(out, time, event, grid, alpha=0.5, sigma=0.1):
    """DeepHit loss of logits ``out`` [n, len(grid) + 1]: alpha * likelihood + (1 - alpha) * ranking."""
    torch = _torch()
    pmf = torch.softmax(out, dim=1)
    cif = torch.cumsum(pmf, dim=1)
    k = torch.as_tensor(bin_index(grid, time))
    ev = torch.as_tensor(np.asarray(event, dtype=bool))
    eps = 1e-7
    p_bin = pmf.gather(1, k[:, None]).squeeze(1)
    # censored: the event falls in the censoring bin or later
    surv_from = 1.0 - cif.gather(1, k[:, None]).squeeze(1) + p_bin
    nll = -torch.where(ev, torch.log(p_bin + eps), torch.log(surv_from + eps)).mean()
    t = torch.as_tensor(np.asarray(time, dtype=float))
    pairs = ev[:, None] & (t[:, None] < t[None, :])
    if not bool(pairs.any()):
        return nll
    f_own = cif.gather(1, k[:, None])            # F_i(s_i), [n, 1]
    f_other = cif[:, k].T                         # F_j(s_i) at row i, column j
    rank = torch.exp(-(f_own - f_other) / sigma)[pairs].mean()
    return alpha * nll + (1.0 - alpha) * rank
