"""Exact nearest-neighbour queries on feature matrices, in blocks: what PRDC and the memorisation metrics share.

Distances are Euclidean between float64 feature vectors. The bulk of the work is the Gram
identity ``‖x - y‖² = ‖x‖² + ‖y‖² - 2 xᵀy``, one float64 matrix product per block (the fast path
of ``torch.cdist``), on sets first shifted by one common vector (the mean of the first set):
distances do not change, and the norms whose cancellation the identity suffers from shrink. Its
rounding is bounded by ``2 (d + 4) 2⁻⁵³ (‖x‖² + ‖y‖²)``; every decision within that bound of
its threshold is remade from the difference of the two vectors, ``Σ (x - y)²``, as a brute-force
reference computes it: a comparison with a radius, the order of near-equal k-th neighbour
candidates. Ties are therefore exact: a generated copy of a real item lies exactly on the balls
passing through that item, and duplicated items are at distance 0. The distances returned
(k-th neighbour radii, nearest rows) come from the differences too.

Why not float32 products (2.5 times the float64 rate here)? Their worst-case error, ``d · 2⁻²⁴``
relative (1e-4 at 2048 dimensions), leaves about 1% of the comparisons with a radius undecided on
features whose distances concentrate, and deciding those exactly cost more than float32 saved.
The comparisons themselves (memory-bound passes over each block) read a float32 copy of the
block, with a margin covering that rounding too (2⁻²⁰ of the block's largest squared norms).

Memory is bounded by ``block``: a query holds a ``block x block`` float64 distance matrix and
a few of its size (32 MB each at the default 2048) besides the ``(n, d)`` float64 feature
matrices and ``O(n k)`` bookkeeping; time is ``O(n² d)``. Distances within one set (k-th
neighbours) are computed for the blocks on and above the diagonal only, each block serving its
rows and, transposed, its columns, which halves that work.
"""

from __future__ import annotations

import torch

from bench_core.api import BenchError

DEFAULT_BLOCK = 2048
SLACK = 2
"""Candidates kept beyond the k-th, so that near-ties at the k-th are resolved without a full row."""
_EPS64 = 2.0**-53
_PAIR_CHUNK = 4096  # pairs differenced at once: 64 MB of float64 at 2048 dimensions


def check_block(block: object, metric: str) -> int:
    """``block`` if it is an integer of at least 1, else a :class:`BenchError` naming the metric."""
    if not (isinstance(block, int) and not isinstance(block, bool) and block >= 1):
        raise BenchError(f"{metric}: chunk_size must be a positive integer, got {block!r}")
    return block


def prepare(*sets: torch.Tensor) -> list[torch.Tensor]:
    """The sets as float64, shifted by the mean of the first (distances unchanged, norms smaller)."""
    shift = sets[0].to(torch.float64).mean(dim=0, keepdim=True)
    return [s.to(torch.float64) - shift for s in sets]


def _blocks(n: int, block: int) -> list[slice]:
    return [slice(i, min(i + block, n)) for i in range(0, n, block)]


def _sq_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` squared distances by the Gram identity (within :func:`_bound` of the exact ones)."""
    return torch.addmm(b_sq[None, :], a, b.T, beta=1.0, alpha=-2.0).add_(a_sq[:, None])


def _bound(a_sq: torch.Tensor, b_sq: torch.Tensor, d: int) -> torch.Tensor:
    """The Gram identity's rounding bound, ``2 (d + 4) 2⁻⁵³ (‖a‖² + ‖b‖²)``, for broadcastable squared norms."""
    return 2.0 * (d + 4) * _EPS64 * (a_sq + b_sq)


def _exact_sq(a: torch.Tensor, i: torch.Tensor, b: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``Σ (a[i] - b[j])²`` for index tensors of one shape, from the differences, in chunks."""
    flat_i, flat_j = i.reshape(-1), j.reshape(-1)
    out = torch.empty(flat_i.shape, dtype=torch.float64)
    for start in range(0, len(flat_i), _PAIR_CHUNK):
        part = slice(start, start + _PAIR_CHUNK)
        out[part] = (a[flat_i[part]] - b[flat_j[part]]).square().sum(dim=1)
    return out.view(i.shape)


def _kth(
    a: torch.Tensor, b: torch.Tensor, kths: tuple[int, ...], block: int, same: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per ``kth`` (0-based): squared distance to, and index of, the ``kth`` nearest row of ``b``, per row of ``a``.

    One pass serves every ``kth``: the ``max(kths) + 1 + SLACK`` smallest Gram distances of each
    row are kept; near-ties at the ``kth`` are then ordered by exact distances.
    """
    keep = min(len(b), max(kths) + 1 + SLACK)
    a_sq, b_sq = (a * a).sum(dim=1), (b * b).sum(dim=1)
    best = torch.full((len(a), keep), torch.inf, dtype=torch.float64)
    best_idx = torch.zeros((len(a), keep), dtype=torch.long)

    def merge(rows: slice, d2: torch.Tensor, first: int) -> None:
        vals, pos = d2.topk(min(keep, d2.shape[1]), dim=1, largest=False)
        kept, order = torch.cat([best[rows], vals], dim=1).topk(keep, dim=1, largest=False)
        best_idx[rows] = torch.cat([best_idx[rows], pos + first], dim=1).gather(1, order)
        best[rows] = kept

    row_spans, col_spans = _blocks(len(a), block), _blocks(len(b), block)
    for r, rows in enumerate(row_spans):
        for c, cols in enumerate(col_spans):
            if same and c < r:
                continue  # served by block (c, r), transposed
            d2 = _sq_distances(a[rows], b[cols], a_sq[rows], b_sq[cols])
            merge(rows, d2, cols.start)
            if same and c > r:
                merge(cols, d2.T, rows.start)
    bound, worst = _bound(a_sq[:, None], b_sq[best_idx], a.shape[1]), _bound(a_sq, b_sq.max(), a.shape[1])
    return [_settle(a, b, best, best_idx, bound, worst, kth) for kth in kths]


def _settle(
    a: torch.Tensor,
    b: torch.Tensor,
    best: torch.Tensor,
    best_idx: torch.Tensor,
    bound: torch.Tensor,
    worst: torch.Tensor,
    kth: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact ``kth`` neighbour from sorted Gram candidates and their rounding bounds.

    Rows with a near-tie at ``kth`` are re-sorted by exact distances and, if the tie may reach
    past the kept candidates (``worst``: the largest bound of a row), searched in full.
    """
    index = best_idx[:, kth].clone()
    near = (best - best[:, kth : kth + 1]).abs() <= bound + bound[:, kth : kth + 1]
    tied = (near.sum(dim=1) > 1).nonzero().flatten()
    if len(tied):
        exact = _exact_sq(a, tied[:, None].expand_as(best_idx[tied]), b, best_idx[tied])
        exact_sorted, order = exact.sort(dim=1, stable=True)
        index[tied] = best_idx[tied].gather(1, order)[:, kth]
        # A column outside the candidates has exact d2 >= its Gram value - its bound >= last kept - worst.
        floor = best[tied, -1] - worst[tied]
        open_ended = (
            tied[(exact_sorted[:, kth] >= floor) & (exact_sorted[:, kth] > 0)] if best.shape[1] < len(b) else []
        )
        everything = torch.arange(len(b))
        for row in open_ended:
            exact_row = _exact_sq(a, row.expand(len(b)), b, everything)
            index[row] = exact_row.argsort(stable=True)[kth]
    return _exact_sq(a, torch.arange(len(a)), b, index), index


def kth_neighbours(
    x: torch.Tensor, ks: tuple[int, ...], block: int = DEFAULT_BLOCK
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each ``k``: squared distance to, and index of, each row's k-th nearest other row of ``x``.

    ``x`` comes from :func:`prepare`. As in the references (Kynkäänniemi et al., Naeem et al.):
    the ``(k + 1)``-th smallest distance of a row to all rows, itself included at distance 0.
    Needs ``1 <= k < len(x)``.
    """
    return _kth(x, x, ks, block, same=True)


def nearest(queries: torch.Tensor, refs: torch.Tensor, block: int = DEFAULT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest row of ``refs`` for every row of ``queries``."""
    return _kth(queries, refs, (0,), block, same=False)[0]


def prdc_counts(
    real: torch.Tensor,
    fake: torch.Tensor,
    real_radius2_pr: torch.Tensor,
    fake_radius2_pr: torch.Tensor,
    real_radius2_dc: torch.Tensor,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the generated x real distances, counting what precision, recall, density and coverage need.

    Radii are squared k-th neighbour distances (:func:`kth_neighbours`): ``*_pr`` at the
    precision/recall ``k``, ``real_radius2_dc`` at the density/coverage ``k``. Comparisons (of
    squared distances, which order as the distances do) follow the references: ``d <= r`` for
    precision and recall (Kynkäänniemi et al., torch-fidelity), ``d < r`` for density and
    coverage (Naeem et al.'s ``prdc``).

    Returns:
        ``(in_real, density_count, in_fake, covered)``: per generated row, whether some real
        ball holds it and in how many real balls (density radius) it lies; per real row,
        whether some generated ball holds it and whether some generated row lies in its ball.
    """
    real_sq, fake_sq = (real * real).sum(dim=1), (fake * fake).sum(dim=1)
    in_real = torch.zeros(len(fake), dtype=torch.bool)
    density_count = torch.zeros(len(fake), dtype=torch.long)
    in_fake = torch.zeros(len(real), dtype=torch.bool)
    covered = torch.zeros(len(real), dtype=torch.bool)
    radii = [(r, r.to(torch.float32)) for r in (real_radius2_pr, real_radius2_dc, fake_radius2_pr)]
    for rows in _blocks(len(fake), block):
        for cols in _blocks(len(real), block):
            d2 = _sq_distances(fake[rows], real[cols], fake_sq[rows], real_sq[cols])  # (generated, real)
            # Compared in float32 (half the memory traffic of these passes): the margin covers the Gram
            # rounding and the float32 rounding of d2 and of the radii, all below 2^-22 of their largest value.
            top = fake_sq[rows].max() + real_sq[cols].max()
            margin = float(_bound(fake_sq[rows].max(), real_sq[cols].max(), real.shape[1]) + 2.0**-20 * top)
            d32 = d2.to(torch.float32)
            tests = [  # (radius in float64, in float32, as broadcast against the block; strict?)
                (radii[0][0][None, cols], radii[0][1][None, cols], False),
                (radii[1][0][None, cols], radii[1][1][None, cols], True),
                (radii[2][0][rows, None], radii[2][1][rows, None], False),
            ]
            # Per radius, the decision where no rounding can flip it, and the pairs where one can.
            decided, unsure = [], torch.zeros_like(d32, dtype=torch.bool)
            for _, radius, strict in tests:
                sure = d32 < radius - margin if strict else d32 <= radius - margin
                unsure |= (d32 <= radius + margin) ^ sure
                decided.append(sure)
            pairs = unsure.nonzero()
            if len(pairs):  # near-ties (a copy of a real item lies exactly on the balls through it): exact d2
                i, j = pairs[:, 0], pairs[:, 1]
                exact = _exact_sq(fake, i + rows.start, real, j + cols.start)
                for (radius, _, strict), sure in zip(tests, decided, strict=True):
                    limit = radius.expand_as(d2)[i, j]
                    sure[i, j] = exact < limit if strict else exact <= limit
            pr, dc, rf = decided
            in_real[rows] |= pr.any(dim=1)
            density_count[rows] += dc.sum(dim=1)
            covered[cols] |= dc.any(dim=0)
            in_fake[cols] |= rf.any(dim=0)
    return in_real, density_count, in_fake, covered
