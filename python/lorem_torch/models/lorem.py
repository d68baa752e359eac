"""The LOREM model (arXiv 2507.19382), numerically the same family of functions as
lorem-jax 0.2.0 (`lorem/models/mlip.py`), with its hyperparameter names and defaults.

Shapes: N atoms, P pairs (i <- j), d = num_features, s = num_spherical_features,
L = max_degree, C = 1 + (max_degree_lr + 1)**2 charge channels.
Scalar features [N, d]; spherical features [N, (L+1)**2, s] (e3x basis).

The forward pass is split into the stages of docs/design.md section 4:
  encode -> charges, per-atom short-range energies and the state for the readout;
  long-range potentials of the charges (long_range/);
  readout(state, potentials) -> per-atom long-range energies.
"""

from typing import Any, Dict, List, Mapping, Tuple

import torch

from ..errors import UnknownElementError
from ..long_range import (
    PME,
    Ewald,
    check_slab_cell,
    direct_potentials,
    extended_cell,
    long_range_settings,
    slab_moments,
    slab_potentials,
)
from ..long_range.settings import prefer_pme
from ..nn.constants import ConstantsModule
from ..nn.edge_ops import edges_to_nodes_by_pair_type
from ..nn.layers import MLP, DegreeWiseDense, Dense, TensorDense, TensorProduct, Update
from ..nn.message_ops import equivariant_messages, sparse_coupling
from ..nn.radial import BernsteinBasis, cosine_cutoff, radial_basis_with_cutoff
from ..nn.radial_ops import radial_contraction
from ..nn.spherical import SphericalHarmonics, degree_of_component, degree_wise_norm

# the attributes that choose between a fused operator and the plain PyTorch reference
FUSED_SWITCHES = (
    "fused_edges",
    "fused_messages",
    "fused_product",
    "fused_harmonics",
    "fused_radial",
    "fused_mesh",
    "fused_basis",
    "fused_pairs",
)

NUM_ELEMENTS = 100  # rows of the species embedding (atomic numbers 0..99), as lorem-jax

DEFAULT_HYPERPARAMETERS = {
    "cutoff": 5.0,
    "max_degree": 6,
    "max_degree_lr": 2,
    "num_features": 128,
    "num_radial": 32,
    "num_species": 8,
    "num_spherical_features": 8,
    "cutoff_fn": "cosine_cutoff",
    "radial_basis": "basic_bernstein",
    "lr": True,
    "num_message_passing": 0,
    "equivariant_message_passing": True,
    "initialize_node_features": True,
}


class RadialCoefficients(torch.nn.Module):
    """Edge scalars: MLP[d, num_radial * d](pair features) contracted with the radial basis.

    [P, in] pair features, [P, num_radial] radial expansion -> [P, d].
    """

    fused_radial: bool

    def __init__(self, in_features: int, num_radial: int, features: int):
        super().__init__()
        self.num_radial = num_radial
        self.features = features
        self.mlp = MLP(in_features, [features, num_radial * features])
        # per-edge use (message passing): the last layer and the contraction with the
        # radial basis as one operator (nn/radial_ops.py), without the [P, R * d]
        # coefficients; False: the plain path, the reference
        self.fused_radial = True

    def forward(self, pair_features: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        if self.fused_radial:
            return self.fused_forward(pair_features, radial)
        coefficients = self.mlp(pair_features).reshape(-1, self.num_radial, self.features)
        return torch.einsum("prf,pr->pf", coefficients, radial)

    def fused_forward(self, pair_features: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        hidden = pair_features
        last = len(self.mlp.layers) - 1
        kernel = hidden.new_zeros(0, 0)
        for index, layer in enumerate(self.mlp.layers):
            if index == last:
                kernel = layer.kernel
                bias = layer.bias
                if bias is not None:
                    kernel = torch.cat([kernel, bias.unsqueeze(0)], dim=0)
                    hidden = torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1)
            else:
                hidden = torch.nn.functional.silu(layer(hidden))
        return radial_contraction(
            hidden, radial, kernel.reshape(kernel.shape[0], self.num_radial, self.features)
        )

    def pair_table(self, embedding: torch.Tensor, num_types: int) -> torch.Tensor:
        """[T*T, num_radial, d] the MLP of concat(emb_i, emb_j) for every species pair
        t_i * T + t_j, given the embedding [T, e] of the species present."""
        table_in = torch.cat(
            [
                embedding[:, None, :].expand(num_types, num_types, embedding.shape[1]),
                embedding[None, :, :].expand(num_types, num_types, embedding.shape[1]),
            ],
            dim=-1,
        ).reshape(num_types * num_types, 2 * embedding.shape[1])
        return self.mlp(table_in).reshape(-1, self.num_radial, self.features)

    def from_species_pairs(
        self, embedding: torch.Tensor, pair_type: torch.Tensor, num_types: int, radial: torch.Tensor
    ) -> torch.Tensor:
        """The same for pair features concat(emb_i, emb_j) that depend only on the species
        pair: the MLP runs once per species pair rather than once per edge.

        embedding [T, e] of the species present; pair_type [P] = t_i * T + t_j.
        """
        table = self.pair_table(embedding, num_types)
        return products_by_pair_type(radial, pair_type, table)


def products_by_pair_type(
    radial: torch.Tensor, pair_type: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """[P, out] radial[p] @ table[pair_type[p]] for radial [P, R] and a table [T*T, R, out]:
    one matrix product per pair type over the edges of that type."""
    order = torch.argsort(pair_type)
    counts: List[int] = torch.bincount(pair_type, minlength=table.shape[0]).tolist()
    sorted_radial = radial.index_select(0, order)
    pieces: List[torch.Tensor] = []
    start = 0
    for t, count in enumerate(counts):
        if count > 0:
            pieces.append(sorted_radial[start : start + count] @ table[t])
        start += count
    if len(pieces) == 0:
        return radial.new_zeros(0, table.shape[2])
    # back to edge order by a gather (its backward keeps only the indices; an index_copy
    # into zeros would keep a [P, out] tensor)
    inverse = torch.empty_like(order).index_copy_(
        0, order, torch.arange(order.shape[0], device=order.device)
    )
    return torch.cat(pieces, dim=0).index_select(0, inverse)


class ScalarMessagePassingStep(torch.nn.Module):
    """One optional message-passing step of lorem-jax with scalar messages only."""

    def __init__(self, features: int, num_radial: int):
        super().__init__()
        self.radial_coefficients = RadialCoefficients(2 * features, num_radial, features)
        self.edge_to_node = Dense(features, features, bias=False)
        self.update_scalar = Update(features, features)
        self.energy_head = MLP(features, [features, features, 1])

    def scalar_update(
        self,
        scalar: torch.Tensor,
        radial: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """New scalar features [num_nodes, d] of the receiving atoms and the edge scalars [P, d].

        scalar [N, d] holds every atom (receivers first, then ghosts that only send)."""
        pair_features = torch.cat([scalar[centers], scalar[others]], dim=-1)
        edges_scalar = self.radial_coefficients(pair_features, radial)
        summed = edges_scalar.new_zeros(num_nodes, scalar.shape[1]).index_add(
            0, centers, edges_scalar
        )
        return self.update_scalar(scalar[:num_nodes], self.edge_to_node(summed)), edges_scalar

    def forward(
        self,
        scalar: torch.Tensor,
        spherical: torch.Tensor,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scalar, spherical, per-atom energy term) of the first num_nodes atoms."""
        scalar, _ = self.scalar_update(scalar, radial, centers, others, num_nodes)
        return scalar, spherical[:num_nodes], self.energy_head(scalar)[:, 0]


class EquivariantMessagePassingStep(ScalarMessagePassingStep, ConstantsModule):
    """One optional message-passing step with equivariant messages (e3x.nn.MessagePass).

    `fused_messages` (default): the messages come from one operator over the sparse
    coupling (nn/message_ops.py), with no per-edge [P, (L+1)**2, s] tensor; False: the
    dense eager path (filter, gather, TensorProduct, index_add), kept as the reference.
    """

    fused_messages: bool

    def __init__(self, features: int, num_radial: int, max_degree: int, spherical_features: int):
        super().__init__(features, num_radial)
        num_l = max_degree + 1
        self.max_degree = max_degree
        self.spherical_coefficients = Dense(features, num_l * spherical_features, bias=False)
        self.filter = DegreeWiseDense(max_degree, spherical_features, spherical_features)
        self.message_tensor = TensorProduct(max_degree, max_degree, max_degree, spherical_features)
        self.self_dense = DegreeWiseDense(max_degree, spherical_features, spherical_features)
        self.message_dense = DegreeWiseDense(max_degree, spherical_features, spherical_features)
        self.combine = TensorProduct(max_degree, max_degree, max_degree, spherical_features)
        self.update_spherical = Update(features, num_l * spherical_features)
        self.register_constant("l_factors", degree_factors(max_degree))
        self.register_buffer("component_degree", degree_of_component(max_degree), persistent=False)
        self.fused_messages = True
        entries, coupling, path_index = sparse_coupling(max_degree)
        self.register_buffer("coupling_entries", entries, persistent=False)
        self.register_constant("coupling", coupling)
        self.register_buffer("coupling_paths", path_index, persistent=False)

    def messages(
        self,
        spherical: torch.Tensor,
        harmonics: torch.Tensor,
        edges_scalar: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        num_nodes: int,
    ) -> torch.Tensor:
        """[num_nodes, (L+1)**2, s]: the filtered edge harmonics times the senders'
        features, coupled by the tensor product and summed onto the receivers."""
        coefficients = self.spherical_coefficients(edges_scalar)
        if self.fused_messages:
            num_l = self.max_degree + 1
            per_degree = coefficients.reshape(
                coefficients.shape[0], num_l, coefficients.shape[1] // num_l
            )  # explicit sizes: a rank may hold no edges
            # the degree-wise filter acts on the feature axis, so it commutes with Y
            filtered = torch.einsum("plc,lcg->plg", per_degree, self.filter.kernel)
            kernel = self.message_tensor.kernel
            weights = kernel.reshape(-1, kernel.shape[-1]).index_select(0, self.coupling_paths)
            return equivariant_messages(
                harmonics,
                filtered,
                weights,
                spherical,
                centers,
                others,
                self.coupling_entries,
                self.coupling,
                num_nodes,
            )
        edges_spherical = edge_spherical(
            coefficients, harmonics, self.component_degree, self.max_degree
        )
        products = self.message_tensor(self.filter(edges_spherical), spherical[others])
        return products.new_zeros(num_nodes, spherical.shape[1], spherical.shape[2]).index_add(
            0, centers, products
        )

    def forward(
        self,
        scalar: torch.Tensor,
        spherical: torch.Tensor,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scalar, edges_scalar = self.scalar_update(scalar, radial, centers, others, num_nodes)
        messages = self.messages(spherical, harmonics, edges_scalar, centers, others, num_nodes)
        spherical = self.combine(
            self.self_dense(spherical[:num_nodes]), self.message_dense(messages)
        )
        scalar = self.update_spherical(
            scalar, norm_features(spherical, self.max_degree, self.l_factors)
        )
        return scalar, spherical, self.energy_head(scalar)[:, 0]


class LongRangeBlock(ConstantsModule):
    """Charges from the features, and the readout of the long-range potentials."""

    def __init__(self, features: int, max_degree: int, spherical_features: int, max_degree_lr: int):
        super().__init__()
        self.max_degree = max_degree
        self.charge_head = MLP(features, [2 * features, 1])
        self.charge_tensor = TensorDense(max_degree, spherical_features, 1, max_degree_lr)
        self.potential_mixing = DegreeWiseDense(max_degree_lr, 1, spherical_features)
        self.potential_tensor = TensorProduct(
            max_degree_lr, max_degree, max_degree, spherical_features
        )
        self.update_lr = Update(features, 1 + (max_degree + 1) * spherical_features)
        self.energy_head = MLP(features, [features, features, 1])
        self.register_constant("l_factors", degree_factors(max_degree))

    def charges(self, scalar: torch.Tensor, spherical: torch.Tensor) -> torch.Tensor:
        """[N, C]: the scalar charge, then the l = 0..max_degree_lr spherical components."""
        projected = self.charge_tensor(spherical)  # [N, (L_lr+1)**2, 1]
        spherical_charges = projected.reshape(projected.shape[0], projected.shape[1])
        return torch.cat([self.charge_head(scalar), spherical_charges], dim=-1)

    def spherical_updates(self, spherical: torch.Tensor, potentials: torch.Tensor) -> torch.Tensor:
        """[N, (L+1)**2, s]: the spherical potentials, mixed to s channels, coupled with the
        spherical features (what the readout, and LoremBEC's last APT head, see)."""
        num_atoms = spherical.shape[0]
        spherical_potential = potentials[:, 1:].reshape(num_atoms, potentials.shape[1] - 1, 1)
        return self.potential_tensor(self.potential_mixing(spherical_potential), spherical)

    def readout_updates(
        self, scalar: torch.Tensor, potentials: torch.Tensor, products: torch.Tensor
    ) -> torch.Tensor:
        """Per-atom long-range energies [N] given the spherical updates [N, (L+1)**2, s]."""
        updates = torch.cat(
            [potentials[:, 0:1], norm_features(products, self.max_degree, self.l_factors)], dim=-1
        )
        return self.energy_head(self.update_lr(scalar, updates))[:, 0]

    def readout(
        self, scalar: torch.Tensor, spherical: torch.Tensor, potentials: torch.Tensor
    ) -> torch.Tensor:
        """Per-atom long-range energies [N] from the state and the potentials [N, C]."""
        products = self.spherical_updates(spherical, potentials)
        return self.readout_updates(scalar, potentials, products)


def degree_factors(max_degree: int) -> torch.Tensor:
    """[L+1] (2l+1)^(1/4): empirical factors that even out the variance of the norms."""
    return torch.tensor([(2 * l + 1) ** 0.25 for l in range(max_degree + 1)])


def norm_features(
    spherical: torch.Tensor, max_degree: int, l_factors: torch.Tensor
) -> torch.Tensor:
    """[N, (L+1)**2, s] -> [N, (L+1) * s] degree-wise norms times (2l+1)^(1/4)."""
    norms = degree_wise_norm(spherical, max_degree) * l_factors[None, :, None]
    return norms.reshape(norms.shape[0], norms.shape[1] * norms.shape[2])


def edge_spherical(
    coefficients: torch.Tensor,
    harmonics: torch.Tensor,
    component_degree: torch.Tensor,
    max_degree: int,
) -> torch.Tensor:
    """[P, (L+1) * s] per-degree coefficients, [P, (L+1)**2] harmonics -> [P, (L+1)**2, s]."""
    per_degree = coefficients.reshape(
        coefficients.shape[0], max_degree + 1, coefficients.shape[1] // (max_degree + 1)
    )
    return per_degree[:, component_degree, :] * harmonics[:, :, None]


class Lorem(ConstantsModule):
    """LOREM: equivariant message passing with learned scalar and spherical charges in Ewald."""

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
        equivariant_message_passing: bool = True,
        initialize_node_features: bool = True,
        species: List[int] | None = None,
        baseline: Dict[int, float] | None = None,
        long_range: str | Mapping[str, Any] | None = None,
    ):
        """lorem-jax hyperparameters, the species and per-element baseline energies, and
        the long-range settings (long_range/settings.py: method ewald | pme | auto,
        accuracy, max_memory_gb, slab, slab_factor; None: Ewald at the default accuracy)."""
        super().__init__()
        if cutoff_fn != "cosine_cutoff":
            raise ValueError(f"cutoff_fn {cutoff_fn!r} is not supported (only 'cosine_cutoff')")
        if radial_basis != "basic_bernstein":
            raise ValueError(
                f"radial_basis {radial_basis!r} is not supported (only 'basic_bernstein')"
            )
        if lr and not 0 <= max_degree_lr <= max_degree:
            raise ValueError(f"max_degree_lr {max_degree_lr} must lie in [0, max_degree]")
        if num_message_passing < 0:
            raise ValueError(f"num_message_passing must be >= 0, got {num_message_passing}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        d, s, num_l = num_features, num_spherical_features, max_degree + 1
        self.cutoff = float(cutoff)
        self.max_degree = max_degree
        self.num_features = d
        self.spherical_features = s
        self.num_charges = 1 + (max_degree_lr + 1) ** 2 if lr else 0
        # long-range parameters are model state (docs/design.md section 2), never re-derived
        self.lr_wavelength = self.cutoff / 8.0
        self.smearing = 2.0 * self.lr_wavelength

        species_list = sorted(set(species)) if species is not None else list(range(1, NUM_ELEMENTS))
        if any(not 0 < int(z) < NUM_ELEMENTS for z in species_list):
            raise ValueError(f"species must be atomic numbers in [1, {NUM_ELEMENTS})")
        self.species: List[int] = [int(z) for z in species_list]
        known = torch.zeros(NUM_ELEMENTS, dtype=torch.bool)
        known[torch.tensor(self.species, dtype=torch.long)] = True
        self.register_buffer("known_species", known)
        baseline_table = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
        for z, energy in (baseline or {}).items():
            baseline_table[int(z)] = float(energy)
        # float64 whatever the model dtype: totals are summed in float64 (docs/design.md)
        self.register_constant("baseline", baseline_table, persistent=True, always_float64=True)
        self.register_constant("l_factors", degree_factors(max_degree))
        self.register_buffer("component_degree", degree_of_component(max_degree), persistent=False)

        self.embedding = torch.nn.Parameter(torch.randn(NUM_ELEMENTS, num_species))
        self.radial = BernsteinBasis(num_radial, self.cutoff)
        self.harmonics = SphericalHarmonics(max_degree)

        # -- initial block --
        self.radial_coefficients = RadialCoefficients(2 * num_species, num_radial, d)
        self.node_init: Dense | None = (
            Dense(num_species, d, bias=True) if initialize_node_features else None
        )
        self.edge_to_node = Dense(d, d, bias=False)
        self.update_scalar = Update(d, d)
        self.spherical_coefficients = Dense(d, num_l * s, bias=False)
        self.self_tensor = TensorDense(max_degree, s, s, max_degree)
        self.update_spherical = Update(d, num_l * s)
        self.energy_head = MLP(d, [d, d, 1])
        # the initial block's sums over neighbours by the fused operators (nn/edge_ops.py)
        # or, as the reference, per edge in plain PyTorch; set by use_fused_operators
        self.fused_edges: bool = True
        # the radial basis times the cutoff as one operator (nn/radial.py), likewise
        self.fused_basis: bool = True

        # -- optional message passing --
        steps: List[torch.nn.Module] = []
        for _ in range(num_message_passing):
            if equivariant_message_passing:
                steps.append(EquivariantMessagePassingStep(d, num_radial, max_degree, s))
            else:
                steps.append(ScalarMessagePassingStep(d, num_radial))
        self.message_passing = torch.nn.ModuleList(steps)

        # -- long range --
        self.long_range_settings = long_range_settings(long_range)
        self.long_range_method: str = self.long_range_settings["method"]
        accuracy = self.long_range_settings["accuracy"]
        max_memory_gb = self.long_range_settings["max_memory_gb"]
        # 2D slabs (structures flagged `slab`): k-space over the cell extended along z by
        # slab_factor and the dipole correction (long_range/slab.py); refused without
        self.slab: bool = bool(self.long_range_settings["slab"])
        self.slab_factor: float = float(self.long_range_settings["slab_factor"])
        self.ewald = Ewald(
            smearing=self.smearing,
            lr_wavelength=self.lr_wavelength,
            accuracy=accuracy,
            channels=max(1, self.num_charges),
            max_memory_gb=max_memory_gb,
        )
        # built for every model, like Ewald (no parameters): TorchScript then types the
        # staged pme_* methods of short-range exports too; self.long_range gates their use
        self.pme = PME(
            smearing=self.smearing,
            accuracy=accuracy,
            channels=max(1, self.num_charges),
            max_memory_gb=max_memory_gb,
        )
        self.long_range: LongRangeBlock | None = (
            LongRangeBlock(d, max_degree, s, max_degree_lr) if lr else None
        )

        self.hyperparameters = {
            "cutoff": float(cutoff),
            "max_degree": int(max_degree),
            "max_degree_lr": int(max_degree_lr),
            "num_features": int(num_features),
            "num_radial": int(num_radial),
            "num_species": int(num_species),
            "num_spherical_features": int(num_spherical_features),
            "cutoff_fn": cutoff_fn,
            "radial_basis": radial_basis,
            "lr": bool(lr),
            "num_message_passing": int(num_message_passing),
            "equivariant_message_passing": bool(equivariant_message_passing),
            "initialize_node_features": bool(initialize_node_features),
        }

    @torch.jit.unused
    def config(self) -> Dict:
        """Everything needed to rebuild the model, as plain data."""
        baseline = {z: float(self.baseline[z]) for z in self.species if float(self.baseline[z])}
        return {
            **self.hyperparameters,
            "species": list(self.species),
            "baseline": baseline,
            "long_range": dict(self.long_range_settings),
        }

    @torch.jit.unused
    def with_long_range(self, long_range: str | Mapping[str, Any] | None) -> "Lorem":
        """A new model with the same weights and these long-range settings, given over
        the current ones (e.g. "pme", or {"accuracy": 1e-8})."""
        config = self.config()
        config["long_range"] = long_range_settings(long_range, base=self.long_range_settings)
        baseline = config.pop("baseline")
        config.pop("kind", None)
        parameter = next(self.parameters())
        model = type(self)(**config, baseline=baseline).to(dtype=parameter.dtype)
        model.load_state_dict(self.state_dict())
        model.copy_operator_switches(self)
        return model.to(device=parameter.device)

    @torch.jit.unused
    def copy_operator_switches(self, source: "Lorem") -> None:
        """The fused/reference switches of `source`, module by module (a module `source`
        lacks, e.g. a PME made by with_long_range, takes the common setting when all of
        source's switches agree): a rebuilt model keeps use_fused_operators(False)."""
        switches = {
            (name, switch): bool(getattr(module, switch))
            for name, module in source.named_modules()
            for switch in FUSED_SWITCHES
            if hasattr(module, switch)
        }
        common = set(switches.values())
        for name, module in self.named_modules():
            for switch in FUSED_SWITCHES:
                if not hasattr(module, switch):
                    continue
                if (name, switch) in switches:
                    setattr(module, switch, switches[(name, switch)])
                elif len(common) == 1:
                    setattr(module, switch, next(iter(common)))

    @torch.jit.unused
    def use_fused_operators(self, enabled: bool = True) -> "Lorem":
        """The one switch between the fused C++ operators (default) and the plain
        PyTorch reference path, for every block that has one: the initial block's sums
        over neighbours (`fused_edges`), the equivariant messages (`fused_messages`),
        every tensor product (`fused_product`), the edge harmonics (`fused_harmonics`),
        the per-edge radial MLP of message passing (`fused_radial`), the PME mesh's
        spread, interpolation and convolution (`fused_mesh`), the radial basis with its cutoff
        (`fused_basis`) and the real-space sum of Ewald and PME (`fused_pairs`).
        Returns self."""
        for module in self.modules():
            for switch in FUSED_SWITCHES:
                if hasattr(module, switch):
                    setattr(module, switch, bool(enabled))
        return self

    def check_species(self, atomic_numbers: torch.Tensor) -> None:
        """Raise UnknownElementError for atomic numbers the model was not built for.

        One host sync (the `bool`); the list of offenders is only built on failure.
        """
        table_size = self.known_species.shape[0]
        in_range = (atomic_numbers >= 0) & (atomic_numbers < table_size)
        known = self.known_species[atomic_numbers.clamp(0, table_size - 1)] & in_range
        if not bool(known.all()):
            bad: List[int] = torch.unique(atomic_numbers[~known]).tolist()
            raise UnknownElementError(
                "[lorem:element] unknown element: atomic numbers "
                + str(bad)
                + " are not among the model's species "
                + str(self.species)
            )

    # -- stage 1: encode (initial block, message passing, charges) --

    def edge_basis(self, pair_vectors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[P, 3] vectors r_j - r_i -> radial functions times the cutoff [P, num_radial] and
        spherical harmonics of the unit vectors [P, (L+1)**2]."""
        distances = torch.linalg.norm(pair_vectors, dim=-1)
        unit = pair_vectors / distances[:, None]
        if self.fused_basis:
            radial = radial_basis_with_cutoff(
                distances, self.radial.num, self.radial.limit, self.cutoff
            )
        else:
            radial = self.radial(distances) * cosine_cutoff(distances, self.cutoff)[:, None]
        return radial, self.harmonics(unit)

    def initial_features(
        self,
        atomic_numbers: torch.Tensor,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The initial block for the first `num_nodes` atoms; the others (ghost atoms)
        only lend their species to the edges, and every centre must be a node.

        Returns per-atom energies (no baseline) [n], scalar [n, d], spherical [n, (L+1)**2, s].
        Every path into the model passes here, so this is where species are checked.
        """
        self.check_species(atomic_numbers)
        present, species_index = torch.unique(atomic_numbers, return_inverse=True)
        num_types = present.shape[0]
        species_embedding = self.embedding[atomic_numbers[:num_nodes]]
        pair_type = species_index[centers] * num_types + species_index[others]

        node_init = self.node_init
        if node_init is not None:
            scalar = node_init(species_embedding)
        else:
            scalar = species_embedding.new_zeros(num_nodes, self.num_features)
        if self.fused_edges:
            summed, spherical = self.fused_edge_sums(
                present, pair_type, num_types, radial, harmonics, centers, num_nodes
            )
        else:
            summed, spherical = self.eager_edge_sums(
                present, pair_type, num_types, radial, harmonics, centers, num_nodes
            )
        scalar = self.update_scalar(scalar, self.edge_to_node(summed))
        spherical = self.self_tensor(spherical)
        scalar = self.update_spherical(
            scalar, norm_features(spherical, self.max_degree, self.l_factors)
        )
        return self.energy_head(scalar)[:, 0], scalar, spherical

    def eager_edge_sums(
        self,
        present: torch.Tensor,
        pair_type: torch.Tensor,
        num_types: int,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        centers: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The initial block's sums over neighbours, per edge in plain PyTorch (the
        reference for the fused path): edge scalars summed [n, d], and the per-degree
        coefficients times Y_lm summed [n, (L+1)**2, s]."""
        edges_scalar = self.radial_coefficients.from_species_pairs(
            self.embedding[present], pair_type, num_types, radial
        )
        # the sum over neighbours commutes with the bias-free Dense: sum first
        summed = edges_scalar.new_zeros(num_nodes, self.num_features).index_add(
            0, centers, edges_scalar
        )
        edges_spherical = edge_spherical(
            self.spherical_coefficients(edges_scalar),
            harmonics,
            self.component_degree,
            self.max_degree,
        )
        spherical = edges_spherical.new_zeros(
            num_nodes, edges_spherical.shape[1], self.spherical_features
        ).index_add(0, centers, edges_spherical)
        return summed, spherical

    def fused_edge_sums(
        self,
        present: torch.Tensor,
        pair_type: torch.Tensor,
        num_types: int,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        centers: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The same sums without per-edge [P, d] or [P, (L+1)**2, s] tensors.

        The edge scalars radial[p] @ table[t_p] are linear in the radial basis, so the
        radial functions are summed per atom and pair type first ([n, T*T, R]) and
        contracted with the table once. The spherical coefficients Dense(edge scalars)
        are radial[p] @ (table[t_p] @ W): [P, (L+1) * s] per edge, and the fused
        operator edges_to_nodes sums them times Y_lm onto the atoms.
        """
        table = self.radial_coefficients.pair_table(self.embedding[present], num_types)
        num_pair_types, num_radial = table.shape[0], table.shape[1]
        radial_sums = radial.new_zeros(num_nodes * num_pair_types, num_radial).index_add(
            0, centers * num_pair_types + pair_type, radial
        )
        summed = radial_sums.reshape(num_nodes, num_pair_types * num_radial) @ table.reshape(
            num_pair_types * num_radial, self.num_features
        )
        # spherical_coefficients is bias-free, so it maps the table row by row; the
        # operator forms radial[p] @ table[pair_type[p]] one pair type at a time and keeps
        # radial, not the [P, (L+1) * s] coefficients, for its backward
        coefficient_table = self.spherical_coefficients(table).reshape(
            num_pair_types, num_radial, self.max_degree + 1, self.spherical_features
        )
        spherical = edges_to_nodes_by_pair_type(
            radial, coefficient_table, pair_type, harmonics, centers, num_nodes
        )
        return summed, spherical

    def message_passing_step(
        self,
        layer: int,
        scalar: torch.Tensor,
        spherical: torch.Tensor,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        num_nodes: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Message-passing layer `layer` (0-based): features of all atoms [N, ...] (nodes
        first, then ghosts with their owners' features) -> energy term, scalar and
        spherical features of the first `num_nodes` atoms."""
        for index, step in enumerate(self.message_passing):
            if index == layer:
                scalar, spherical, energy = step(
                    scalar, spherical, radial, harmonics, centers, others, num_nodes
                )
                return energy, scalar, spherical
        raise ValueError("message-passing layer index out of range")

    def charges(self, scalar: torch.Tensor, spherical: torch.Tensor) -> torch.Tensor:
        """[n, C] learned charges of the atoms (C = 0 without long range)."""
        long_range = self.long_range
        if long_range is None:
            return scalar.new_zeros(scalar.shape[0], 0)
        return long_range.charges(scalar, spherical)

    def encode(
        self,
        atomic_numbers: torch.Tensor,
        pair_vectors: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Short-range part of a whole system (every atom a node) given [P, 3] vectors
        r_j - r_i of pairs i <- j.

        Returns per-atom energies without baseline [N], scalar [N, d] and spherical
        [N, (L+1)**2, s] features, and charges [N, C].
        """
        num_atoms = atomic_numbers.shape[0]
        radial, harmonics = self.edge_basis(pair_vectors)
        energy, scalar, spherical = self.initial_features(
            atomic_numbers, radial, harmonics, centers, others, num_atoms
        )
        for step in self.message_passing:
            scalar, spherical, step_energy = step(
                scalar, spherical, radial, harmonics, centers, others, num_atoms
            )
            energy = energy + step_energy
        return energy, scalar, spherical, self.charges(scalar, spherical)

    # -- stage 5: readout --

    def readout(
        self, scalar: torch.Tensor, spherical: torch.Tensor, potentials: torch.Tensor
    ) -> torch.Tensor:
        """Long-range per-atom energies [N] from the state and potentials [N, C]."""
        long_range = self.long_range
        if long_range is None:
            return scalar.new_zeros(scalar.shape[0])
        return long_range.readout(scalar, spherical, potentials)

    # -- single process: stages 2-4 with identity communication --

    def uses_pme(self, cell: torch.Tensor, num_atoms: int) -> bool:
        """Whether a periodic structure's k-space goes to PME: always for method pme,
        never for ewald, by the estimated cost for auto (long_range/settings.py)."""
        if self.long_range is None or self.long_range_method == "ewald":
            return False
        if self.long_range_method == "pme":
            return True
        return self.prefers_pme(cell, num_atoms)

    def prefers_pme(self, cell: torch.Tensor, num_atoms: int) -> bool:
        """Method auto's choice: whether PME is estimated faster than Ewald here."""
        if self.long_range is None:
            return False
        grid = self.ewald.cut_grid(cell)
        mesh = self.pme.mesh_of(cell)
        return prefer_pme(
            num_atoms, self.ewald.num_kvectors(grid), mesh[0] * mesh[1] * mesh[2], self.pme.order
        )

    def slab_cell(self, cell: torch.Tensor) -> torch.Tensor:
        """The k-space cell of a slab: c scaled by slab_factor ([lorem:cell] for a cell
        whose a, b leave the xy plane or c is not along z; refused unless the settings
        have slab)."""
        if not self.slab:
            raise ValueError(
                "[lorem:cell] "  # errors.CELL_CODE
                + "a structure periodic along x and y only (a 2D slab) needs a model with "
                + "long_range slab: true (LoremCalculator(long_range={'slab': True}) or "
                + "lorem-export --slab)"
            )
        check_slab_cell(cell)
        return extended_cell(cell, self.slab_factor)

    def long_range_potentials(
        self,
        positions: torch.Tensor,
        charges: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        centers: torch.Tensor,
        others: torch.Tensor,
        distances: torch.Tensor,
        pair_structure: torch.Tensor,
        structure_offsets: torch.Tensor,
        slab: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N, C] potentials of a batch: Ewald or PME per periodic structure (uses_pme),
        direct sum otherwise; structures flagged in slab [S] (periodic along x and y only,
        their pbc True) as 2D slabs (long_range/slab.py)."""
        periodic_pairs = pbc[pair_structure]
        real_space = self.ewald.real_space_potentials(
            charges,
            positions.shape[0],
            centers[periodic_pairs],
            others[periodic_pairs],
            distances[periodic_pairs],
        )
        offsets: List[int] = structure_offsets.tolist()
        periodic: List[bool] = pbc.tolist()
        slabs: List[bool] = [False for _ in periodic]
        if slab is not None:
            flags: List[bool] = slab.tolist()
            slabs = flags
        pieces: List[torch.Tensor] = []
        for index in range(len(offsets) - 1):
            start, stop = offsets[index], offsets[index + 1]
            q = charges[start:stop]
            r = positions[start:stop]
            if periodic[index]:
                kcell = cell[index]
                if slabs[index]:
                    kcell = self.slab_cell(kcell)
                if self.uses_pme(kcell, stop - start):
                    kspace = self.pme.kspace_potentials(r, q, kcell)
                    pot = self.pme.potentials(
                        kspace, q, q.sum(dim=0), kcell, real_space[start:stop]
                    )
                else:
                    shape = self.ewald.grid_shape(kcell)
                    structure_factors = self.ewald.structure_factors(r, q, kcell, shape)
                    pot = self.ewald.potentials(
                        r, q, structure_factors, q.sum(dim=0), kcell, shape, real_space[start:stop]
                    )
                if slabs[index]:
                    moments = slab_moments(r, q, kcell)
                    pot = pot + slab_potentials(r, moments, kcell, self.ewald.prefactor)
                pieces.append(pot)
            else:
                pieces.append(direct_potentials(r, q, self.ewald.prefactor))
        return torch.cat(pieces, dim=0)

    def forward(
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
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-atom energies [N] (baseline included; float64), charges [N, C], potentials
        [N, C].

        Inputs as in keys.py (slab: keys.SLAB, None when no structure is a slab);
        differentiable in positions and cell.
        """
        pair_vectors = batch_pair_vectors(
            positions, cell, centers, others, cell_shifts, atom_structure
        )
        energy, scalar, spherical, charges = self.encode(
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
            energy = energy + self.readout(scalar, spherical, potentials)
        # float64 whatever the model dtype: the baseline is hundreds of eV per atom
        return energy.to(torch.float64) + self.baseline[atomic_numbers], charges, potentials


def batch_pair_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    centers: torch.Tensor,
    others: torch.Tensor,
    cell_shifts: torch.Tensor,
    atom_structure: torch.Tensor,
) -> torch.Tensor:
    """[P, 3] r_j - r_i + shift @ cell of the pairs i <- j of a batch (keys.py inputs)."""
    # gathers by index_select: their backward is index_add (an advanced-indexing gather's
    # is an accumulating index_put, several times slower on CPU for [P, 3, 3])
    differences = positions.index_select(0, others) - positions.index_select(0, centers)
    if cell.shape[0] == 1:
        # one structure (MD, the calculator): one [P, 3] x [3, 3] product, without the
        # [P, 3, 3] per-pair cells and their scattered backward
        return differences + cell_shifts @ cell[0]
    pair_structure = atom_structure.index_select(0, centers)
    return differences + torch.einsum(
        "pa,pab->pb", cell_shifts, cell.index_select(0, pair_structure)
    )
