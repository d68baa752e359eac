"""The SO(2) form of a layer's equivariant message against the sparse Clebsch-Gordan form
that lorem::message_form runs (issue 17, item 3: "pick by measurement").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/so2_message_count.py
        [--edges 29702] [--check-edges 64] [--repeats 5]

Rotated onto its edge (the edge along the axis where each degree of the e3x harmonics has
one nonzero component), Y(r) keeps one component per degree, so the message's contraction
keeps only the coupling entries whose m1 is that component; the sending atom's features
are rotated into the edge frame first and the message rotated back after (per degree, a
dense (2l+1) x (2l+1) matrix per edge). This script

1. checks the identity in float64 on --check-edges random edges: the messages of the
   SO(2) form (rotation matrices fitted per edge from the harmonics themselves, so no
   convention is assumed) equal lorem::message_form's;
2. counts, per edge and channel, the multiply-adds of each target the layer asks of the
   operator (the messages, and the derivatives in features, harmonics, coefficients and
   weights) in both forms. The harmonics derivative gains nothing: every m1 of it is
   an output, so it runs over all entries in either frame;
3. times, on --edges edges of 8 channels in float32, lorem::message_form's messages and
   the two rotations of the SO(2) form as batched matrix products (torch.bmm per degree),
   and prints the SO(2) form's messages projected from them: the rotations as timed plus
   the on-axis entries at the sparse kernel's measured time per entry.
"""

import argparse
import statistics
import sys
import time

import torch

from lorem_torch.nn.message_ops import (
    COEFFICIENTS,
    FEATURES,
    GRADIENT,
    HARMONICS,
    WEIGHTS,
    sparse_coupling,
)
from lorem_torch.nn.spherical import SphericalHarmonics

L = 6  # the default model's max_degree
CHANNELS = 8


def axis_components(harmonics: SphericalHarmonics) -> torch.Tensor:
    """The component of each degree that is nonzero on the z axis (asserted: exactly one)."""
    on_z = harmonics(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))[0]
    nonzero = (on_z.abs() > 1e-12).nonzero().flatten()
    if nonzero.shape[0] != L + 1:
        raise SystemExit(f"expected one nonzero component per degree on z, got {nonzero.tolist()}")
    return nonzero


def rotation_onto_z(unit: torch.Tensor) -> torch.Tensor:
    """[P, 3] unit vectors -> [P, 3, 3] rotations R with R @ unit = z."""
    helper = torch.where(
        (unit[:, 2].abs() < 0.9)[:, None],
        torch.tensor([0.0, 0.0, 1.0], dtype=unit.dtype).expand_as(unit),
        torch.tensor([1.0, 0.0, 0.0], dtype=unit.dtype).expand_as(unit),
    )
    first = torch.nn.functional.normalize(torch.cross(helper, unit, dim=1), dim=1)
    second = torch.cross(unit, first, dim=1)
    return torch.stack([first, second, unit], dim=1)


def wigner_blocks(harmonics: SphericalHarmonics, rotations: torch.Tensor) -> list:
    """Per degree l, [P, 2l+1, 2l+1] matrices D with Y_l(R v) = D Y_l(v), fitted by least
    squares on 64 random directions (exact: the harmonics of one degree span its space)."""
    samples = torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64), dim=1)
    y = harmonics(samples)  # [K, M]
    rotated = harmonics(torch.einsum("pab,kb->pka", rotations, samples).reshape(-1, 3))
    rotated = rotated.reshape(rotations.shape[0], samples.shape[0], -1)  # [P, K, M]
    blocks = []
    for degree in range(L + 1):
        cut = slice(degree**2, (degree + 1) ** 2)
        # rotated[p, k, :] = D_p @ y[k, :]  ->  y D_p^T = rotated[p]
        solution = torch.linalg.lstsq(
            y[:, cut].expand(rotations.shape[0], -1, -1), rotated[..., cut]
        )
        blocks.append(solution.solution.transpose(1, 2))
    return blocks


def rotate(blocks: list, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Per edge and degree, D x (or D^T x) for x [P, M, s]."""
    parts = []
    for degree, d in enumerate(blocks):
        part = x[:, degree**2 : (degree + 1) ** 2]
        parts.append(torch.bmm(d.transpose(1, 2) if transpose else d, part))
    return torch.cat(parts, dim=1)


def check_identity(num_edges: int, entries, coupling, path_index, axis) -> float:
    """Max |SO(2) - sparse| over the messages of num_edges edges, float64."""
    harmonics = SphericalHarmonics(L).to(torch.float64)
    unit = torch.nn.functional.normalize(torch.randn(num_edges, 3, dtype=torch.float64), dim=1)
    y = harmonics(unit)
    coefficients = torch.randn(num_edges, L + 1, CHANNELS, dtype=torch.float64)
    weights = torch.randn(path_index.shape[0], CHANNELS, dtype=torch.float64)
    features = torch.randn(num_edges, (L + 1) ** 2, CHANNELS, dtype=torch.float64)
    edges = torch.arange(num_edges)
    sparse = torch.ops.lorem.message_form(
        GRADIENT,
        [num_edges, (L + 1) ** 2, CHANNELS],
        y,
        coefficients,
        weights,
        features,
        None,
        edges,
        edges,
        entries,
        coupling,
    )
    blocks = wigner_blocks(harmonics, rotation_onto_z(unit))
    y_edge = rotate([d for d in blocks], y[:, :, None])[:, :, 0]  # Y(z): one per degree
    x_edge = rotate(blocks, features)
    m1, m2, m3, path, l1 = entries.unbind(1)
    on_axis = torch.isin(m1, axis)
    m1, m2, m3, path, l1 = m1[on_axis], m2[on_axis], m3[on_axis], path[on_axis], l1[on_axis]
    terms = (
        coupling[on_axis][None, :, None]
        * y_edge[:, m1, None]
        * coefficients[:, l1]
        * weights[path][None]
        * x_edge[:, m2]
    )  # [P, on-axis entries, s]
    m_edge = torch.zeros_like(x_edge).index_add_(1, m3, terms)
    so2 = rotate(blocks, m_edge, transpose=True)
    return (so2 - sparse).abs().max().item(), sparse.abs().max().item()


def counts(entries, axis) -> dict:
    """Multiply-adds per edge and channel of each target, sparse form and SO(2) form."""
    total = entries.shape[0]
    on_axis = int(torch.isin(entries[:, 0], axis).sum())
    rotation = sum((2 * degree + 1) ** 2 for degree in range(L + 1))
    return {
        # sparse: every target is one pass over all entries
        "sparse": {t: total for t in (GRADIENT, FEATURES, HARMONICS, COEFFICIENTS, WEIGHTS)},
        # SO(2): two rotations (in and out of the edge frame) around the on-axis entries;
        # the harmonics' derivative needs every m1, so it stays the sparse pass
        "so2": {
            GRADIENT: on_axis + 2 * rotation,
            FEATURES: on_axis + 2 * rotation,
            COEFFICIENTS: on_axis + 2 * rotation,
            WEIGHTS: on_axis + 2 * rotation,
            HARMONICS: total,
        },
        "on_axis": on_axis,
        "rotation": rotation,
    }


def median_seconds(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=29_702)
    parser.add_argument("--atoms", type=int, default=513)
    parser.add_argument("--check-edges", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    entries, coupling, path_index = sparse_coupling(L)
    axis = axis_components(SphericalHarmonics(L).to(torch.float64))

    difference, scale = check_identity(args.check_edges, entries, coupling, path_index, axis)
    print(
        f"identity, float64, {args.check_edges} edges: max |SO(2) - message_form| = "
        f"{difference:.1e} (max |message| {scale:.1e})"
    )
    if not difference <= 1e-10 * max(scale, 1.0):
        raise SystemExit("the SO(2) form does not reproduce the messages")

    table = counts(entries, axis)
    print(
        f"\nmultiply-adds per edge and channel, L = {L}: {entries.shape[0]} coupling entries, "
        f"{table['on_axis']} with m1 on the edge axis, {table['rotation']} per rotation"
    )
    names = {
        GRADIENT: "messages",
        FEATURES: "d/d features",
        HARMONICS: "d/d harmonics",
        COEFFICIENTS: "d/d coefficients",
        WEIGHTS: "d/d weights",
    }
    print(f"  {'target':18s} {'sparse':>7s} {'SO(2)':>7s}")
    for target, name in names.items():
        print(f"  {name:18s} {table['sparse'][target]:7d} {table['so2'][target]:7d}")
    inference = (GRADIENT, FEATURES, HARMONICS, COEFFICIENTS)  # energy + forces
    for label, targets in (("energy + forces (4 targets)", inference), ("all five", names)):
        sparse = sum(table["sparse"][t] for t in targets)
        so2 = sum(table["so2"][t] for t in targets)
        print(f"  {label:28s} sparse {sparse:6d}  SO(2) {so2:6d}  ({sparse / so2:.2f}x fewer)")

    P, N, M = args.edges, args.atoms, (L + 1) ** 2
    dtype = torch.float32
    factors = [
        torch.randn(P, M, dtype=dtype),
        torch.randn(P, L + 1, CHANNELS, dtype=dtype),
        torch.randn(path_index.shape[0], CHANNELS, dtype=dtype),
        torch.randn(N, M, CHANNELS, dtype=dtype),
        None,
    ]
    centers = torch.sort(torch.randint(0, N, (P,))).values
    others = torch.randint(0, N, (P,))
    coupling32 = coupling.to(dtype)
    sparse_s = median_seconds(
        lambda: torch.ops.lorem.message_form(
            GRADIENT, [N, M, CHANNELS], *factors, centers, others, entries, coupling32
        ),
        args.repeats,
    )
    blocks = [torch.randn(P, 2 * d + 1, 2 * d + 1, dtype=dtype) for d in range(L + 1)]
    gathered = torch.randn(P, M, CHANNELS, dtype=dtype)
    rotation_s = median_seconds(lambda: rotate(blocks, gathered), args.repeats)
    per_entry = sparse_s / (P * entries.shape[0])
    on_axis_s = per_entry * P * table["on_axis"]
    with_bmm = 2 * rotation_s + on_axis_s
    # a rotation written like the sparse kernel (one multiply-add over the channels per
    # matrix entry) at that kernel's measured rate: what a fused SO(2) kernel could reach
    with_kernel = per_entry * P * table["so2"][GRADIENT]
    print(
        f"\n{P} edges, {CHANNELS} channels, float32, {torch.get_num_threads()} thread(s):\n"
        f"  message_form messages        {sparse_s * 1e3:7.1f} ms ({per_entry * 1e9:.2f} ns "
        f"per edge-entry)\n"
        f"  one rotation, torch.bmm      {rotation_s * 1e3:7.1f} ms (per degree, every edge)\n"
        f"  SO(2) messages, projected:   {with_bmm * 1e3:7.1f} ms ({sparse_s / with_bmm:.2f}x) "
        f"with the bmm rotations; {with_kernel * 1e3:.1f} ms ({sparse_s / with_kernel:.2f}x) "
        f"with rotations at the sparse kernel's rate per entry\n"
        f"  (neither counts building the per-edge rotation matrices)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
