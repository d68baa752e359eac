"""ASE calculator over a LOREM model (the only module that knows ASE calculators).

The model may be a Lorem object, a checkpoint path or an exported TorchScript file.
Neighbour lists are built at cutoff + skin and reused, filtered to the cutoff, until
an atom has moved by more than half the skin or the cell has changed.

With a LoremBEC (a model with the Born-effective-charge head) the results also hold
"born_effective_charges" [N, 3, 3], and a uniform electric field (V/Angstrom) adds the
forces F_i = Z*_i E; as in lorem-jax the field changes neither energy nor stress.
"""

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import keys
from .data import DEFAULT_MIN_DISTANCE, check_structure, neighbor_list
from .errors import AtomsTooCloseError, MissingAPTHeadError, NonFiniteError, UnknownElementError
from .models import BECModel, EnergyModel, Lorem, LoremBEC


def _load(model, dtype):
    """-> (callable (graph) -> outputs dict, cutoff, dtype, check_species)"""
    if isinstance(model, (str, Path)):
        from .checkpoint import CheckpointError, model_from_checkpoint

        try:
            model = model_from_checkpoint(model, dtype=dtype)
        except CheckpointError:
            from .export import load_exported

            module, metadata = load_exported(model)
            export_dtype = {"float32": torch.float32, "float64": torch.float64}[metadata["dtype"]]
            if dtype is not None and dtype != export_dtype:
                raise ValueError(
                    f"{model} was exported in {metadata['dtype']}; export it again with "
                    f"--dtype {str(dtype).replace('torch.', '')} to compute in that precision"
                ) from None
            return module, float(metadata["cutoff"]), export_dtype
    if not isinstance(model, Lorem):
        raise TypeError(f"expected a Lorem, a checkpoint or an exported file, got {type(model)}")
    dtype = dtype or next(model.parameters()).dtype
    return model.to(dtype), model.cutoff, dtype


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

    Extra results: "charges" [N, C] and "potentials" [N, C] of the long range; with a
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
        device: str | None = None,
        dtype: torch.dtype | None = None,
        skin: float = 0.5,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        electric_field=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model, self.cutoff, self.dtype = _load(model, dtype)
        self.model = self.model.to(self.device)
        self.scripted = isinstance(self.model, torch.jit.ScriptModule)
        self.species = set(self.model.model.species if self.scripted else self.model.species)
        self.has_apt = not self.scripted and isinstance(self.model, LoremBEC)
        if self.scripted:
            self.energy_model = None
        elif self.has_apt:
            self.energy_model = BECModel(self.model)
        else:
            self.energy_model = EnergyModel(self.model)
        self._electric_field = None
        self.electric_field = electric_field
        self.skin = float(skin)
        self.min_distance = min_distance
        self._list = None  # neighbour list at cutoff + skin, with the geometry it was built for
        self.rebuilds = 0

    @property
    def electric_field(self) -> np.ndarray | None:
        """The applied uniform field [3] in V/A, or None."""
        return self._electric_field

    @electric_field.setter
    def electric_field(self, value) -> None:
        field = _field_vector(value)
        if field is not None and not self.has_apt:
            where = (
                "an exported file does not carry the Born-effective-charge head yet; "
                "use the checkpoint"
                if self.scripted
                else "train a model with `kind: bec` (LoremBEC) or import a lorem-jax LoremBEC"
            )
            raise MissingAPTHeadError(
                "an electric field needs a model with a Born-effective-charge (APT) head, "
                f"and this one has none: {where}"
            )
        self._electric_field = field
        self.reset()

    def _pairs(self, atoms):
        periodic = check_structure(atoms, 0)
        positions = atoms.get_positions()
        cell = atoms.get_cell().array if periodic else np.zeros((3, 3))
        stale = (
            self._list is None
            or self._list["periodic"] != periodic
            or len(self._list["positions"]) != len(atoms)
            or not np.allclose(self._list["cell"], cell, rtol=0, atol=1e-10)
            or not np.array_equal(self._list["numbers"], atoms.numbers)
            or np.max(np.linalg.norm(positions - self._list["positions"], axis=1), initial=0.0)
            > 0.5 * self.skin
        )
        if stale:
            self._list = neighbor_list(positions, cell, periodic, self.cutoff + self.skin)
            self._list.update(
                positions=positions.copy(),
                cell=cell.copy(),
                periodic=periodic,
                numbers=atoms.numbers.copy(),
            )
            self.rebuilds += 1
        nl = self._list
        vectors = positions[nl["others"]] - positions[nl["centers"]] + nl["cell_shifts"] @ cell
        distances = np.linalg.norm(vectors, axis=1)
        keep = distances < self.cutoff
        if keep.any() and distances[keep].min() < self.min_distance:
            k = np.where(keep)[0][np.argmin(distances[keep])]
            raise AtomsTooCloseError(
                f"atoms {nl['centers'][k]} and {nl['others'][k]} are {distances[k]:.4f} A apart, "
                f"closer than the allowed minimum {self.min_distance} A"
            )
        return periodic, cell, nl["centers"][keep], nl["others"][keep], nl["cell_shifts"][keep]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic, cell, centers, others, shifts = self._pairs(self.atoms)
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
            keys.POSITIONS: floats(self.atoms.get_positions()),
            keys.ATOMIC_NUMBERS: ints(self.atoms.numbers),
            keys.CELL: floats(cell[None]),
            keys.PBC: torch.tensor([periodic], device=self.device),
            keys.CENTERS: ints(centers),
            keys.OTHERS: ints(others),
            keys.CELL_SHIFTS: floats(shifts.astype(np.float64)),
            keys.ATOM_STRUCTURE: ints(np.zeros(n)),
            keys.STRUCTURE_OFFSETS: ints([0, n]),
        }
        unknown = sorted(set(self.atoms.numbers.tolist()) - self.species)
        if unknown:
            raise UnknownElementError(
                f"unknown element: atomic numbers {unknown} are not among the model's species "
                f"{sorted(self.species)}"
            )
        if self.scripted:
            energy, energies, forces, virial, charges, potentials = self.model.energy_forces_virial(
                *(graph[k] for k in keys.INPUT_KEYS)
            )
            out = {keys.ENERGY: energy, keys.ENERGIES: energies, keys.FORCES: forces}
            out.update({keys.VIRIAL: virial, keys.CHARGES: charges, keys.POTENTIALS: potentials})
        elif self.has_apt:
            field = None
            if self._electric_field is not None:
                field = torch.tensor(self._electric_field, dtype=self.dtype, device=self.device)
            out = self.energy_model(
                **graph, compute_forces=True, compute_stress=periodic, electric_field=field
            )
        else:
            out = self.energy_model(**graph, compute_forces=True, compute_stress=periodic)

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
            stress = numpy(keys.VIRIAL)[0] / abs(np.linalg.det(cell))
            stress = 0.5 * (stress + stress.T)
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
