"""ASE calculator over a LOREM model (the only module that knows ASE calculators).

The model may be a Lorem object, a checkpoint path or an exported TorchScript file.
Neighbour lists are built at cutoff + skin and reused, filtered to the cutoff, until
an atom has moved by more than half the skin or the cell has changed. Positions are
moved into the model's frame (data.model_frame_offsets) in float64 first.

With a LoremBEC (a model with the Born-effective-charge head) the results also hold
"born_effective_charges" [N, 3, 3], and a uniform electric field (V/Angstrom) adds the
forces F_i = Z*_i E; as in lorem-jax the field changes neither energy nor stress.
"""

import warnings
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import keys
from .data import (
    DEFAULT_MIN_DISTANCE,
    check_periodicity,
    check_structure,
    is_slab,
    model_frame_offsets,
    neighbor_list,
)
from .data.symmetry import symmetric_sites_message, vanishing_degrees
from .errors import (
    EXPORT_MEMORY_SETTING,
    AtomsTooCloseError,
    LongRangeTooLargeError,
    MissingAPTHeadError,
    NonFiniteError,
    NotPeriodicError,
    UnknownElementError,
    reraise_coded,
)
from .export import load_any
from .export.contract import contract_of, require
from .models import Lorem
from .predict import predict
from .vocabulary import torch_dtype


def with_long_range(model, contract, long_range):
    """The model with other long-range settings: a new Lorem with the same weights, or
    (an export, which carries Ewald and PME) the export switched to another method."""
    if not isinstance(model, torch.jit.ScriptModule):
        return model.with_long_range(long_range)
    method = long_range if isinstance(long_range, str) else dict(long_range).get("method")
    other = (
        {}
        if isinstance(long_range, str)
        else {k: v for k, v in long_range.items() if k != "method"}
    )
    if other:
        raise ValueError(
            f"an export's long-range settings other than the method ({sorted(other)}) are fixed "
            "when it is written: export it again (lorem-export --accuracy ..., --slab)"
        )
    available = contract["long_range"]["methods"]
    if method not in available:
        raise ValueError(f"long_range {method!r} is not available for this export ({available})")
    # a scripted export holds the model more than once (its staged methods' and its energy
    # model's, copies after scripting): every one of them is switched, or the energies
    # would come from the export's own method while the calculator reported another
    switched = [m for _, m in model.named_modules() if hasattr(m, "long_range_method")]
    for module in switched:
        module.long_range_method = method
    if not switched:
        raise ValueError("this export has no long-range method to switch")
    return model


def _device(value) -> torch.device:
    """None (cpu), a torch.device or a device string ("cpu", "cuda", "cuda:1")."""
    if value is None:
        return torch.device("cpu")
    if isinstance(value, torch.device):
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {value!r}: CUDA is not available to this PyTorch")
    return device


class SymmetricSitesWarning(UserWarning):
    """Atoms on symmetric sites: the energy has a kink there (data/symmetry.py)."""


def _field_vector(electric_field) -> np.ndarray | None:
    if electric_field is None:
        return None
    field = np.asarray(electric_field, dtype=np.float64)
    if field.shape != (3,):
        raise ValueError(
            f"electric_field must be three numbers (Ex, Ey, Ez) in V/A, got shape {field.shape}"
        )
    if not np.isfinite(field).all():
        raise NonFiniteError(f"electric_field {field.tolist()} is not finite")
    return field


class LoremCalculator(Calculator):
    """Energy, free energy, per-atom energies, forces and (periodic cells) stress.

    Extra results: "charges" [N, C] and "potentials" [N, C] of the long range.

    device: "cpu" (default), "cuda" or "cuda:N"; dtype: "float32" or "float64" (the
    --dtype of the commands; default the model's, and an export computes only in its own).
    Energies are summed in float64 whatever the dtype (docs/design.md, section 2).

    long_range overrides the long-range settings of a Lorem or checkpoint for this
    calculator ("ewald", "pme", "auto" or a mapping such as {"method": "pme",
    "accuracy": 1e-8}; see lorem_torch.long_range.settings). Asking for "pme" makes
    non-periodic structures an error (they are summed directly). {"slab": True,
    "slab_factor": 3.0} runs structures with pbc (True, True, False) as 2D slabs
    (docs/design.md section 2.1); an export does so when it was exported with --slab.

    With a
    LoremBEC, "born_effective_charges" [N, 3, 3] (elementary charges, acoustic sum rule
    applied; Z*_i[a, b] = dF_i[a] / dE[b]). `electric_field=(Ex, Ey, Ez)` in V/A adds
    Z*_i E to the forces (needs a LoremBEC; energy and stress are those without field).
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
        "born_effective_charges",
    ]

    def __init__(
        self,
        model: Lorem | str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        skin: float = 0.5,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        long_range: str | dict | None = None,
        electric_field=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.device = _device(device)
        self.model, self.dtype, self.contract = load_any(model, torch_dtype(dtype))
        self.requires_periodic = False
        if long_range is not None:
            self.model = with_long_range(self.model, self.contract, long_range)
            self.requires_periodic = self.model_long_range_method() == "pme"
            if not isinstance(self.model, torch.jit.ScriptModule):
                # the settings may grant what the model's own did not (slab)
                self.contract = contract_of(self.model, self.dtype, methods=[])
        self.model = self.model.to(self.device)
        self.cutoff = float(self.contract["cutoff"])
        self.scripted = isinstance(self.model, torch.jit.ScriptModule)
        self.species = set(self.contract["species"]["atomic_numbers"])
        self.has_apt = bool(self.contract["capabilities"]["electric_field"])
        self._electric_field = None
        self.electric_field = electric_field
        self.skin = float(skin)
        self.min_distance = min_distance
        self._list = None  # neighbour list at cutoff + skin, with the geometry it was built for
        self.rebuilds = 0
        self.symmetric_sites_warned = False

    def model_long_range_method(self) -> str:
        model = self.model.model if self.scripted_module() else self.model
        return model.long_range_method

    def scripted_module(self) -> bool:
        return isinstance(self.model, torch.jit.ScriptModule)

    @property
    def electric_field(self) -> np.ndarray | None:
        """The applied uniform field [3] in V/A, or None."""
        return self._electric_field

    @electric_field.setter
    def electric_field(self, value) -> None:
        field = _field_vector(value)
        if field is not None and not self.has_apt:
            raise MissingAPTHeadError(
                "an electric field needs a model with a Born-effective-charge (APT) head: "
                + self.contract["limitations"]["electric_field"]
            )
        self._electric_field = field
        self.reset()

    def _pairs(self, atoms):
        pbc = np.asarray(atoms.get_pbc(), dtype=bool)
        shape = "periodic" if pbc.all() else "non_periodic" if not pbc.any() else "slab"
        # before the contract's slab capability: what no model takes is refused as such
        check_periodicity(pbc, f"structure {atoms.get_chemical_formula()}")
        require(
            self.contract, shape, f"structure {atoms.get_chemical_formula()} (pbc {pbc.tolist()})"
        )
        periodic = check_structure(atoms, 0, slab=shape == "slab")
        slab = is_slab(atoms)
        positions = atoms.get_positions()
        cell = atoms.get_cell().array if periodic else np.zeros((3, 3))
        stale = (
            self._list is None
            or self._list["periodic"] != periodic
            or self._list["slab"] != slab
            or len(self._list["positions"]) != len(atoms)
            or not np.allclose(self._list["cell"], cell, rtol=0, atol=1e-10)
            or not np.array_equal(self._list["numbers"], atoms.numbers)
            or np.max(np.linalg.norm(positions - self._list["positions"], axis=1), initial=0.0)
            > 0.5 * self.skin
        )
        if stale:
            # kept with the list: the cell shifts refer to positions moved by these offsets
            offsets = model_frame_offsets(positions, cell, periodic, slab)
            self._list = neighbor_list(
                positions - offsets, cell, periodic, self.cutoff + self.skin, slab
            )
            self._list.update(
                offsets=offsets,
                positions=positions.copy(),
                cell=cell.copy(),
                periodic=periodic,
                slab=slab,
                numbers=atoms.numbers.copy(),
            )
            self.rebuilds += 1
        nl = self._list
        positions = positions - nl["offsets"]
        vectors = positions[nl["others"]] - positions[nl["centers"]] + nl["cell_shifts"] @ cell
        distances = np.linalg.norm(vectors, axis=1)
        keep = distances < self.cutoff
        if stale and not self.symmetric_sites_warned:
            self._warn_on_symmetric_sites(
                atoms, vectors[keep], nl["centers"][keep], nl["others"][keep]
            )
        if keep.any() and distances[keep].min() < self.min_distance:
            k = np.where(keep)[0][np.argmin(distances[keep])]
            raise AtomsTooCloseError(
                f"atoms {nl['centers'][k]} and {nl['others'][k]} are {distances[k]:.4f} A apart, "
                f"closer than the allowed minimum {self.min_distance} A"
            )
        return (
            periodic,
            cell,
            positions,
            nl["centers"][keep],
            nl["others"][keep],
            nl["cell_shifts"][keep],
        )

    def _evaluate(self, graph, periodic: bool):
        field = None
        if self._electric_field is not None:
            field = torch.tensor(self._electric_field, dtype=self.dtype, device=self.device)
        return predict(self.model, graph, stress=periodic, electric_field=field)

    def _memory_setting(self) -> str:
        """Where this calculator's user raises the long-range memory limit."""
        if self.scripted:
            return EXPORT_MEMORY_SETTING
        return "LoremCalculator(..., long_range={'max_memory_gb': ...})"

    def _warn_on_symmetric_sites(self, atoms, vectors, centers, others) -> None:
        """Once per calculator: a structure (the start of a relaxation or MD, usually)
        with atoms on sites where features vanish by symmetry (data/symmetry.py)."""
        degrees, count = vanishing_degrees(
            vectors, centers, atoms.numbers[others], len(atoms), self._max_degree()
        )
        if degrees:
            self.symmetric_sites_warned = True
            formula = atoms.get_chemical_formula()
            message = symmetric_sites_message(degrees, count, len(atoms), formula)
            warnings.warn(f"LoremCalculator: {message}", SymmetricSitesWarning, stacklevel=4)

    def _max_degree(self) -> int:
        model = self.model.model if self.scripted_module() else self.model
        return int(getattr(model, "max_degree", 6))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic, cell, positions, centers, others, shifts = self._pairs(self.atoms)
        slab = is_slab(self.atoms)
        if self.requires_periodic and not periodic:
            raise NotPeriodicError(
                "long_range 'pme' was asked for, but the structure is not periodic "
                "(non-periodic structures use the direct sum: long_range='ewald' or 'auto')"
            )
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is only defined for periodic cells")
        if "born_effective_charges" in properties and not self.has_apt:
            raise PropertyNotImplementedError(
                "born_effective_charges need a model with the APT head (LoremBEC)"
            )
        n = len(self.atoms)

        def floats(x):
            return torch.tensor(np.asarray(x), dtype=self.dtype, device=self.device)

        def ints(x):
            return torch.tensor(np.asarray(x, dtype=np.int64), device=self.device)

        graph = {
            keys.POSITIONS: floats(positions),
            keys.ATOMIC_NUMBERS: ints(self.atoms.numbers),
            keys.CELL: floats(cell[None]),
            keys.PBC: torch.tensor([periodic], device=self.device),
            keys.CENTERS: ints(centers),
            keys.OTHERS: ints(others),
            keys.CELL_SHIFTS: floats(shifts.astype(np.float64)),
            keys.ATOM_STRUCTURE: ints(np.zeros(n)),
            keys.STRUCTURE_OFFSETS: ints([0, n]),
        }
        if slab:
            graph[keys.SLAB] = torch.tensor([True], device=self.device)
        unknown = sorted(set(self.atoms.numbers.tolist()) - self.species)
        if unknown:
            raise UnknownElementError(
                f"unknown element: atomic numbers {unknown} are not among the model's species "
                f"{sorted(self.species)}"
            )
        try:
            out = self._evaluate(graph, periodic)
        except (torch.jit.Error, RuntimeError, LongRangeTooLargeError) as error:
            # one line, not TorchScript's traceback; the memory limit as set here
            reraise_coded(error, self._memory_setting())
            raise

        def numpy(key):
            return out[key].detach().cpu().double().numpy()

        energy = float(numpy(keys.ENERGY)[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": numpy(keys.ENERGIES),
            "forces": numpy(keys.FORCES),
            "charges": numpy(keys.CHARGES),
            "potentials": numpy(keys.POTENTIALS),
        }
        if self.has_apt:
            self.results["born_effective_charges"] = numpy(keys.APT)
        if periodic:
            # a slab's too: the volume of its cell as given (not the extended k-space cell),
            # as LAMMPS divides by its box (docs/design.md section 2.1)
            stress = numpy(keys.VIRIAL)[0] / abs(np.linalg.det(cell))
            stress = 0.5 * (stress + stress.T)
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
        self._check_finite()

    def _check_finite(self) -> None:
        """A NaN or infinity in any result is an error, not a number to hand on (inputs are
        checked before; what passes them and still fails, e.g. coincident atoms with
        min_distance=0, stops here with the first atom named)."""
        for name, value in self.results.items():
            finite = np.isfinite(np.asarray(value))
            if finite.all():
                continue
            self.results = {}
            where = ""
            if finite.ndim >= 1 and finite.shape[0] == len(self.atoms):
                rows = finite.reshape(finite.shape[0], -1).all(axis=1)
                where = f" (first at atom {int(np.argmin(rows))})"
            raise NonFiniteError(
                f"the model gave a non-finite {name}{where}: atoms closer than the model can "
                f"describe (min_distance is {self.min_distance} A) or a model with non-finite "
                "weights"
            )
