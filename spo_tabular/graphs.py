"""Comparison-graph structure per context: does the preference loss have a finite, unique minimiser?

SPEC §6. Edge i → j when i beats j with positive mass. Per context: strongly connected ⇒ unique
finite minimiser; several strongly connected components with no edge between them ⇒ a continuum
of minimisers (the mass between components is free); an edge between components ⇒ no finite
minimiser (the loser's probability runs to 0). Zermelo (1929), Ford (1957).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class GraphReport:
    """Per-context structure: n_components (m,) strongly connected components, unbounded (m,) bool."""

    n_components: np.ndarray
    unbounded: np.ndarray

    @classmethod
    def strongly_connected(cls, n_contexts: int) -> "GraphReport":
        """The report of m complete (hence strongly connected) graphs."""
        return cls(n_components=np.ones(n_contexts, dtype=np.int64), unbounded=np.zeros(n_contexts, dtype=bool))

    @property
    def unique(self) -> np.ndarray:
        """(m,) bool: a unique finite minimiser exists (strongly connected)."""
        return self.n_components == 1

    @property
    def non_unique(self) -> np.ndarray:
        """(m,) bool: minimisers exist but form a continuum (disconnected, no one-way edges)."""
        return (self.n_components > 1) & ~self.unbounded


def comparison_graph(beats: np.ndarray) -> GraphReport:
    """Analyse beats[x, i, j] > 0 (i beat j in context x), shape (m, n, n), for every context at once."""
    m, n, _ = beats.shape
    if is_complete(beats):
        return GraphReport.strongly_connected(m)
    connected = strongly_connected(beats)
    if connected.all():
        return GraphReport.strongly_connected(m)
    if connected.any():          # the exact component analysis only where it is needed
        sub = comparison_graph(beats[~connected])
        n_components = np.ones(m, dtype=np.int64)
        unbounded = np.zeros(m, dtype=bool)
        n_components[~connected], unbounded[~connected] = sub.n_components, sub.unbounded
        return GraphReport(n_components=n_components, unbounded=unbounded)
    x, i, j = np.nonzero(beats > 0)
    # One block-diagonal graph over m·n nodes: node x·n + i.
    src, dst = x * n + i, x * n + j
    graph = coo_matrix((np.ones(src.shape[0]), (src, dst)), shape=(m * n, m * n)).tocsr()
    _, labels = connected_components(graph, directed=True, connection="strong")
    labels = labels.reshape(m, n)
    n_components = 1 + (np.diff(np.sort(labels, axis=1), axis=1) != 0).sum(axis=1)
    crossing = labels[x, i] != labels[x, j]           # an edge between two components: one-way
    unbounded = np.zeros(m, dtype=bool)
    unbounded[x[crossing]] = True
    return GraphReport(n_components=n_components, unbounded=unbounded)


def is_complete(beats: np.ndarray) -> bool:
    """True when every ordered pair i ≠ j has beats[x, i, j] > 0 in every context (one counting pass)."""
    m, n, _ = beats.shape
    positive = beats > 0 if beats.dtype != bool else beats
    on_diagonal = np.count_nonzero(np.diagonal(positive, axis1=1, axis2=2))
    return np.count_nonzero(positive) - on_diagonal == m * n * (n - 1)


def strongly_connected(beats: np.ndarray) -> np.ndarray:
    """(m,) bool: every action reaches action 0 and is reached from it along beats[x] > 0 edges.

    Batched breadth-first search as boolean matrix-vector products (one per level; dense comparison
    graphs have a diameter of 2 or 3), far cheaper than building one sparse graph for scipy.
    """
    import torch
    A = torch.from_numpy(np.ascontiguousarray(beats > 0)).to(torch.float32)    # (m, n, n): i -> j
    m, n, _ = A.shape
    forward = torch.zeros(m, n, dtype=torch.float32)
    forward[:, 0] = 1.0
    backward = forward.clone()
    for _ in range(n):
        new_forward = torch.clamp(forward + torch.bmm(forward[:, None, :], A)[:, 0, :], max=1.0)
        new_backward = torch.clamp(backward + torch.bmm(A, backward[:, :, None])[:, :, 0], max=1.0)
        if torch.equal(new_forward, forward) and torch.equal(new_backward, backward):
            break
        forward, backward = new_forward, new_backward
    return ((forward > 0).all(dim=1) & (backward > 0).all(dim=1)).numpy()
