"""A small deterministic k-means (seeded k-means++ start, Lloyd iterations) that always returns
exactly ``k`` non-empty clusters when there are at least ``k`` points."""

from __future__ import annotations

import torch

from quantizers.errors import QuantizationError


def kmeans(points: torch.Tensor, k: int, seed: int = 0, max_iterations: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``points`` ``(n, d)`` into ``k`` groups; returns ``(labels (n,) int64, centres (k, d) float64)``.

    The start is k-means++ drawn from a generator seeded by ``seed``; Lloyd iterations run until
    the labels stop changing (or ``max_iterations``). A cluster left empty takes the point lying
    farthest from its centre among the clusters with more than one point, so every label in
    ``0 … k − 1`` is used. Ties go to the lowest cluster index. Same inputs, same output.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise QuantizationError(f"k-means needs a non-empty (n, d) tensor, got shape {tuple(points.shape)}")
    if not 1 <= k <= points.shape[0]:
        raise QuantizationError(f"k-means cannot make {k} groups of {points.shape[0]} points")
    data = points.detach().double().cpu()
    centres = _plus_plus(data, k, torch.Generator().manual_seed(seed))
    labels = torch.full((data.shape[0],), -1, dtype=torch.int64)
    for _ in range(max_iterations):
        new = torch.cdist(data, centres).argmin(dim=1)
        new = _fill_empty(data, centres, new, k)
        if torch.equal(new, labels):
            break
        labels = new
        centres = torch.stack([data[labels == c].mean(dim=0) for c in range(k)])
    return labels, centres


def _plus_plus(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ start: the first centre uniformly, each next one with probability ∝ squared
    distance to the nearest centre chosen (uniformly among all points when every distance is 0)."""
    chosen = [int(torch.randint(data.shape[0], (1,), generator=generator))]
    nearest = (data - data[chosen[0]]).square().sum(dim=1)
    for _ in range(1, k):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (data - data[index]).square().sum(dim=1))
    return data[chosen].clone()


def _fill_empty(data: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Labels where every cluster holds a point (see :func:`kmeans`)."""
    labels = labels.clone()
    for cluster in range(k):
        if bool((labels == cluster).any()):
            continue
        counts = torch.bincount(labels, minlength=k)
        distance = (data - centres[labels]).square().sum(dim=1)
        distance[counts[labels] <= 1] = -1.0
        labels[int(distance.argmax())] = cluster
    return labels
