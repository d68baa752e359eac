"""LoremBEC: the LOREM backbone with a head for Born effective charges, as lorem-jax 0.2.0
(`lorem/models/bec.py`), with its hyperparameter names and defaults.

Each atom's Born effective charge tensor (atomic polar tensor, APT) Z*_i [3, 3] is a
sum of per-atom tensor heads (lorem-jax's PerParticleTensorPredictor): one on the
spherical features of the initial block, one after every message-passing step, and
one on the spherical updates of the long range (the long-range potentials coupled to
the features, the same tensors the long-range energy readout sees). The acoustic sum
rule (sum_i Z*_i = 0 per structure) is a separate step: the excess sum over the atoms
of a structure is spread back evenly, Z*_i <- Z*_i - (sum_j Z*_j) / N. It needs only a
global sum over atoms (across MPI ranks in a domain decomposition).

A uniform field E adds the force F_i[a] = sum_b Z*_i[a, b] E[b] (lorem-jax's convention,
Z*_i[a, b] = dF_i[a] / dE[b]); the energy and the stress are not changed by the field.
Units: Z* in elementary charges, E in V/Angstrom, F in eV/Angstrom.

Shapes: N atoms, S structures, L = max_degree, s = num_spherical_features,
d = num_features; spherical features [N, (L+1)**2, s] (e3x basis).

Staged use (docs/design.md section 4.2; one structure spread over ranks): the exported
`stage_apt(t, spherical)` of every short-range stage plus `long_range_apt(spherical,
potentials)` give the raw APT of the local atoms; the runtime sums it over the local
atoms [3, 3] and over ranks with the atom count (one all-reduce of 10 numbers), subtracts
the mean (the rule above, `apply_acoustic_sum_rule`) and adds `field_forces(apt, E)`.
The APT takes no part in the energy, so its graph needs no backward pass (detach).
"""

from typing import Dict, List, Tuple

import torch

from ..nn.constants import ConstantsModule
from ..nn.layers import DegreeWiseDense, TensorDense, gated_silu
from ..nn.spherical import clebsch_gordan
from .lorem import DEFAULT_HYPERPARAMETERS, Lorem, batch_pair_vectors

# lorem-jax's LoremBEC differs from Lorem in two defaults
DEFAULT_BEC_HYPERPARAMETERS = {
    **DEFAULT_HYPERPARAMETERS,
    "equivariant_message_passing": False,
    "initialize_node_features": False,
}


class AtomicTensorHead(ConstantsModule):
    """lorem-jax's PerParticleTensorPredictor: spherical features [N, (L+1)**2, s] ->
    a Cartesian rank-2 tensor per atom [N, 3, 3].

    Three degree-wise dense layers (scalar bias; gated SiLU between them), a tensor
    product to degrees 0, 1, 2 of even parity (the scalar, the pseudovector and the
    symmetric traceless parts of a 3x3 tensor), and the Clebsch-Gordan map from the
    1 + 3 + 5 components to the 3x3 matrix (the coupling of two vectors).
    """

    def __init__(self, max_degree: int, in_features: int, features: int):
        super().__init__()
        self.dense_in = DegreeWiseDense(max_degree, in_features, features, bias=True)
        self.dense_hidden = DegreeWiseDense(max_degree, features, features, bias=True)
        self.dense_out = DegreeWiseDense(max_degree, features, features, bias=True)
        self.coupling = TensorDense(max_degree, features, 1, 2, bias=True, even_output=True)
        # [9, 3, 3]: l = 0..2 components -> matrix, in the e3x basis (vectors in x, y, z order)
        self.register_constant(
            "to_cartesian", clebsch_gordan(1, 1, 2)[1:, 1:, :].permute(2, 0, 1).contiguous()
        )

    def forward(self, spherical: torch.Tensor) -> torch.Tensor:
        x = gated_silu(self.dense_in(spherical))
        x = gated_silu(self.dense_hidden(x))
        x = self.coupling(self.dense_out(x))  # [N, 9, 1]
        return torch.einsum("nc,cab->nab", x[:, :, 0], self.to_cartesian)


class LoremBEC(Lorem):
    """LOREM with Born effective charges: energies as Lorem, plus per-atom Z* [N, 3, 3].

    forward() returns what Lorem's does (so every energy path works unchanged);
    forward_bec() also returns the APT before the acoustic sum rule.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        max_degree: int = 6,
        max_degree_lr: int = 2,
        num_features: int = 128,
        num_radial: int = 32,
        num_species: int = 8,
        num_spherical_features: int = 8,
        cutoff_fn: str = "cosine_cutoff",
        radial_basis: str = "basic_bernstein",
        lr: bool = True,
        num_message_passing: int = 0,
        equivariant_message_passing: bool = False,
        initialize_node_features: bool = False,
        species: List[int] | None = None,
        baseline: Dict[int, float] | None = None,
        long_range=None,
    ):
        super().__init__(
            cutoff=cutoff,
            max_degree=max_degree,
            max_degree_lr=max_degree_lr,
            num_features=num_features,
            num_radial=num_radial,
            num_species=num_species,
            num_spherical_features=num_spherical_features,
            cutoff_fn=cutoff_fn,
            radial_basis=radial_basis,
            lr=lr,
            num_message_passing=num_message_passing,
            equivariant_message_passing=equivariant_message_passing,
            initialize_node_features=initialize_node_features,
            species=species,
            baseline=baseline,
            long_range=long_range,
        )
        d, s = num_features, num_spherical_features
        self.apt_initial = AtomicTensorHead(max_degree, s, d)
        self.apt_steps = torch.nn.ModuleList(
            [AtomicTensorHead(max_degree, s, d) for _ in range(num_message_passing)]
        )
        self.apt_long_range: AtomicTensorHead | None = (
            AtomicTensorHead(max_degree, s, d) if lr else None
        )

    @torch.jit.unused
    def config(self) -> Dict:
        return {**super().config(), "kind": "bec"}

    # -- stage 1: encode, with the short-range APT --

    @torch.jit.export
    def encode_bec(
        self,
        atomic_numbers: torch.Tensor,
        pair_vectors: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """encode() (same arguments and first four results) and the short-range part of
        the APT [N, 3, 3]: the heads on the spherical features of the initial block and
        of every message-passing step."""
        num_atoms = atomic_numbers.shape[0]
        radial, harmonics = self.edge_basis(pair_vectors)
        energy, scalar, spherical = self.initial_features(
            atomic_numbers, radial, harmonics, centers, others, num_atoms
        )
        apt = self.apt_initial(spherical)
        for step, head in zip(self.message_passing, self.apt_steps):  # noqa: B905 (TorchScript)
            scalar, spherical, step_energy = step(
                scalar, spherical, radial, harmonics, centers, others, num_atoms
            )
            energy = energy + step_energy
            apt = apt + head(spherical)
        return energy, scalar, spherical, self.charges(scalar, spherical), apt

    @torch.jit.export
    def long_range_apt(self, spherical: torch.Tensor, potentials: torch.Tensor) -> torch.Tensor:
        """[n, 3, 3] APT of the long-range head (zeros without long range)."""
        long_range = self.long_range
        head = self.apt_long_range
        if long_range is None or head is None:
            return spherical.new_zeros(spherical.shape[0], 3, 3)
        return head(long_range.spherical_updates(spherical, potentials))

    @torch.jit.export
    def stage_apt(self, stage: int, spherical: torch.Tensor) -> torch.Tensor:
        """The APT head of a stage (0: the initial block, t: message-passing layer t) on
        its spherical features [n, (L+1)**2, s] -> [n, 3, 3] (staged evaluation)."""
        if stage == 0:
            return self.apt_initial(spherical)
        for index, head in enumerate(self.apt_steps):
            if index == stage - 1:
                return head(spherical)
        raise ValueError("APT stage index out of range")

    # -- stage 5: readout, with the long-range APT --

    @torch.jit.export
    def readout_bec(
        self, scalar: torch.Tensor, spherical: torch.Tensor, potentials: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """readout() [n] and the long-range part of the APT [n, 3, 3] (zeros without
        long range), from the state of encode and the potentials [n, C]."""
        long_range = self.long_range
        head = self.apt_long_range
        if long_range is None or head is None:
            zeros = scalar.new_zeros(scalar.shape[0])
            return zeros, scalar.new_zeros(scalar.shape[0], 3, 3)
        products = long_range.spherical_updates(spherical, potentials)
        return long_range.readout_updates(scalar, potentials, products), head(products)

    @torch.jit.export
    def forward_bec(
        self,
        positions: torch.Tensor,
        atomic_numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        cell_shifts: torch.Tensor,
        atom_structure: torch.Tensor,
        structure_offsets: torch.Tensor,
        slab: torch.Tensor | None = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward()'s per-atom energies, charges and potentials, and the APT [N, 3, 3]
        BEFORE the acoustic sum rule (apply acoustic_sum_rule per structure)."""
        pair_vectors = batch_pair_vectors(
            positions, cell, centers, others, cell_shifts, atom_structure
        )
        energy, scalar, spherical, charges, apt = self.encode_bec(
            atomic_numbers, pair_vectors, centers, others
        )
        potentials = charges
        if self.long_range is not None:
            potentials = self.long_range_potentials(
                positions,
                charges,
                cell,
                pbc,
                centers,
                others,
                torch.linalg.norm(pair_vectors, dim=-1),
                atom_structure[centers],
                structure_offsets,
                slab,
            )
            energy_long_range, apt_long_range = self.readout_bec(scalar, spherical, potentials)
            energy = energy + energy_long_range
            apt = apt + apt_long_range
        energy = energy.to(torch.float64) + self.baseline[atomic_numbers]
        return energy, charges, potentials, apt


# -- the acoustic sum rule and the field force (functions: no weights involved) --


def acoustic_sum_rule(
    apt: torch.Tensor, atom_structure: torch.Tensor, num_structures: int
) -> torch.Tensor:
    """[N, 3, 3] APT with the sum over each structure's atoms removed evenly:
    Z*_i - (sum_{j in s(i)} Z*_j) / N_s(i), as lorem-jax's LoremBEC.predict.

    In float64 whatever the model's dtype, rounded once at the end: a float32 sum over N
    atoms, and N subtractions of a rounded mean, left the charges summing to 3e-3 at 5,184
    water atoms (a net force on the system in a field), against 1e-5 or less now."""
    wide = apt.to(torch.float64)
    totals = wide.new_zeros(num_structures, 3, 3).index_add(0, atom_structure, wide)
    counts = wide.new_zeros(num_structures).index_add(
        0, atom_structure, torch.ones_like(atom_structure, dtype=torch.float64)
    )
    excess = totals / counts.clamp(min=1.0)[:, None, None]
    return (wide - excess[atom_structure]).to(apt.dtype)


def apply_acoustic_sum_rule(
    apt_local: torch.Tensor, apt_total: torch.Tensor, num_atoms_total: int
) -> torch.Tensor:
    """One structure spread over ranks: [n_local, 3, 3] local APT, apt_total [3, 3] the sum
    of the APT over ALL atoms (all ranks; float64), num_atoms_total the number of all atoms.
    In float64, rounded once (acoustic_sum_rule)."""
    mean = apt_total.to(torch.float64)[None] / float(max(num_atoms_total, 1))
    return (apt_local.to(torch.float64) - mean).to(apt_local.dtype)


def field_forces(apt: torch.Tensor, electric_field: torch.Tensor) -> torch.Tensor:
    """[N, 3] F_i[a] = sum_b Z*_i[a, b] E_i[b]; apt [N, 3, 3], electric_field [N, 3] or [3]."""
    if electric_field.dim() == 1:
        return torch.einsum("nab,b->na", apt, electric_field)
    return torch.einsum("nab,nb->na", apt, electric_field)
