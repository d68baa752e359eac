"""Labelled datasets from ASE-readable files: configurable keys, checks, splits, baseline."""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch

from .. import keys
from ..data import collate, structure_to_graph
from ..errors import LoremInputError


class DataError(LoremInputError):
    """Training or evaluation data that cannot be used as given."""


class MissingKeyError(DataError, KeyError):
    """A label key that a structure does not have; the message lists the keys it has."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class LabelKeys:
    """Where the labels live: atoms.info / atoms.arrays, or the attached calculator."""

    energy: str = "energy"
    forces: str | None = "forces"
    stress: str | None = None
    apt: str | None = None  # Born effective charges: 9 values per atom, row-major 3x3
    electric_field: str | None = None  # 3 values in atoms.info, V/A; absent means none


@dataclass
class Sample:
    graph: Dict[str, np.ndarray]
    energy: float
    forces: np.ndarray | None
    stress: np.ndarray | None  # [3, 3] eV/A^3, ASE sign convention
    config_type: str = "all"
    num_atoms: int = 0
    apt: np.ndarray | None = None  # [n, 3, 3] elementary charges
    electric_field: np.ndarray | None = None  # [3] V/A, None: no field


def _available(atoms) -> List[str]:
    names = list(atoms.info) + list(atoms.arrays)
    if atoms.calc is not None:
        names += [f"{k} (calculator)" for k in atoms.calc.results]
    return names


def _label(atoms, key: str, per_atom: bool, index: int, source: str):
    calc_results = atoms.calc.results if atoms.calc is not None else {}
    if per_atom and key in atoms.arrays:
        value = atoms.arrays[key]
    elif not per_atom and key in atoms.info:
        value = atoms.info[key]
    elif key in calc_results:
        value = calc_results[key]
    else:
        raise MissingKeyError(
            f"{source}: structure {index} has no {'per-atom ' if per_atom else ''}label "
            f"'{key}'; it has: {', '.join(_available(atoms)) or 'nothing'}"
        )
    value = np.asarray(value, dtype=np.float64)
    if not np.isfinite(value).all():
        raise DataError(f"{source}: structure {index} has NaN or infinite '{key}'")
    return value


def _stress_matrix(value: np.ndarray) -> np.ndarray:
    if value.shape == (3, 3):
        return value
    if value.shape == (6,):  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if value.shape == (9,):
        return value.reshape(3, 3)
    raise DataError(f"stress of shape {value.shape} is neither 3x3 nor Voigt")


def _apt_label(atoms, key: str, index: int, source: str) -> np.ndarray:
    """[n, 3, 3] from atoms.arrays (n x 9 or n x 3 x 3), atoms.info or the calculator
    (9 n values), row-major: apt[i, a, b] = values[i, 3 a + b]."""
    n = len(atoms)
    if key in atoms.arrays:
        value = _label(atoms, key, True, index, source)
    else:
        value = _label(atoms, key, False, index, source)
    if value.shape not in ((n, 9), (n, 3, 3), (9 * n,)):
        raise DataError(
            f"{source}: structure {index} has an APT label '{key}' of shape {value.shape}; "
            f"expected 9 values per atom: ({n}, 9), ({n}, 3, 3) or ({9 * n},)"
        )
    return value.reshape(n, 3, 3)


def _field_label(atoms, key: str, index: int, source: str) -> np.ndarray | None:
    if key not in atoms.info:
        return None
    value = _label(atoms, key, False, index, source)
    if value.shape != (3,):
        raise DataError(
            f"{source}: structure {index} has an electric field '{key}' of shape "
            f"{value.shape}; expected 3 values (V/A)"
        )
    return value if np.any(value != 0) else None


def check_fields(samples: Sequence["Sample"], has_apt: bool, key: str | None) -> None:
    """A model without Born effective charges cannot fit forces computed under a field."""
    with_field = sum(s.electric_field is not None for s in samples)
    if with_field and not has_apt:
        raise DataError(
            f"{with_field} structures carry a non-zero electric field ('{key}'), whose forces "
            "a model without Born effective charges cannot fit: use a model of kind bec, or "
            "ignore the field (data.electric_field_key: null, or --electric-field-key '')"
        )


def load_samples(
    frames: Sequence,
    cutoff: float,
    label_keys: LabelKeys,
    source: str = "data",
    slab: bool = False,
) -> List[Sample]:
    """ASE frames -> samples with graphs precomputed (the positions never change); slab:
    frames with pbc (True, True, False) are 2D slabs (the model's long_range slab)."""
    if len(frames) == 0:
        raise DataError(f"{source} holds no structures")
    samples = []
    for index, atoms in enumerate(frames):
        energy = float(_label(atoms, label_keys.energy, False, index, source))
        forces = (
            _label(atoms, label_keys.forces, True, index, source).reshape(len(atoms), 3)
            if label_keys.forces
            else None
        )
        stress = None
        if label_keys.stress and atoms.pbc.all():
            stress = _stress_matrix(_label(atoms, label_keys.stress, False, index, source))
        apt = _apt_label(atoms, label_keys.apt, index, source) if label_keys.apt else None
        field = None
        if label_keys.electric_field:
            field = _field_label(atoms, label_keys.electric_field, index, source)
        try:
            graph = structure_to_graph(atoms, cutoff, index, slab=slab)
        except LoremInputError as error:  # the same error, naming the file as the labels do
            raise type(error)(f"{source}: {error}") from None
        samples.append(
            Sample(
                graph=graph,
                energy=energy,
                forces=forces,
                stress=stress,
                config_type=str(atoms.info.get("config_type", "all")),
                num_atoms=len(atoms),
                apt=apt,
                electric_field=field,
            )
        )
    return samples


def read_frames(path: str, index: str = ":", pbc: bool | None = None) -> list:
    """Frames of an ASE-readable file; `pbc` (True/False) overrides every frame's periodicity.

    With pbc=False the cell is dropped as well, so that nothing downstream can treat
    the structure as periodic (neighbour lists, Ewald, stress)."""
    import ase.io

    try:
        frames = ase.io.read(path, index)
    except FileNotFoundError:
        raise
    except (IndexError, StopIteration):  # extxyz ends its frame iterator early
        raise DataError(
            f"index {index} is out of range: {path} holds {_frame_count(path)} frames "
            "(the first is 0, the last -1)"
        ) from None
    except Exception as error:
        # some readers fail with an empty message: name the exception at least
        reason = str(error).strip() or type(error).__name__
        raise DataError(f"cannot read {path} with ASE: {reason}") from error
    frames = frames if isinstance(frames, list) else [frames]
    if pbc is not None:
        from ase.calculators.singlepoint import SinglePointCalculator

        for number, atoms in enumerate(frames):
            if pbc and atoms.cell.rank < 3:
                raise DataError(
                    f"{path}: frame {number} has no full cell (lattice rank "
                    f"{atoms.cell.rank}) and cannot be read as periodic (data.pbc: true)"
                )
            results = dict(atoms.calc.results) if atoms.calc is not None else None
            atoms.pbc = bool(pbc)
            if not pbc:
                atoms.cell = None
            if results is not None:  # the stored labels stay valid for the new geometry
                atoms.calc = SinglePointCalculator(atoms, **results)
    return frames


def _frame_count(path: str) -> int:
    import ase.io

    return sum(1 for _ in ase.io.iread(path, ":"))


def split(samples: List, fractions: Sequence[float], seed: int) -> List[List]:
    """Seeded random split by fractions (normalised); every part must be non-empty."""
    order = np.random.default_rng(seed).permutation(len(samples))
    weights = np.asarray(fractions, dtype=float) / np.sum(fractions)
    bounds = np.round(np.cumsum(weights) * len(samples)).astype(int)
    parts, start = [], 0
    for stop in bounds:
        parts.append([samples[i] for i in order[start:stop]])
        start = stop
    for name, part in zip(("train", "valid", "test"), parts, strict=False):
        if not part:
            raise DataError(
                f"the {name} split is empty ({len(samples)} structures split as {list(fractions)})"
            )
    return parts


def composition_matrix(samples: Sequence[Sample]):
    """[S, Z] counts of each element per structure, and the elements (columns)."""
    species = sorted({int(z) for s in samples for z in s.graph[keys.ATOMIC_NUMBERS]})
    counts = np.zeros((len(samples), len(species)))
    column = {z: i for i, z in enumerate(species)}
    for row, sample in enumerate(samples):
        for z in sample.graph[keys.ATOMIC_NUMBERS]:
            counts[row, column[int(z)]] += 1
    return counts, species, column


def baseline_is_determined(samples: Sequence[Sample]) -> bool:
    counts, species, _ = composition_matrix(samples)
    return np.linalg.matrix_rank(counts) == len(species)


def fit_baseline(samples: Sequence[Sample]) -> Dict[int, float]:
    """Per-element energies by least squares: E_s ~ sum_Z n_sZ e_Z (minimum norm if the
    compositions do not determine them)."""
    counts, species, column = composition_matrix(samples)
    energies = np.array([s.energy for s in samples])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {z: float(solution[column[z]]) for z in species}


@dataclass
class Batch:
    graph: Dict[str, torch.Tensor]
    energy: torch.Tensor  # [S] float64 whatever the model dtype (totals: docs/design.md)
    num_atoms: torch.Tensor  # [S] float64
    forces: torch.Tensor | None  # [N, 3]
    stress: torch.Tensor | None  # [S, 3, 3]
    stress_mask: torch.Tensor | None  # [S] which structures have a stress label
    config_types: List[str] = field(default_factory=list)
    apt: torch.Tensor | None = None  # [N, 3, 3]
    electric_field: torch.Tensor | None = None  # [S, 3] V/A, None: no structure has a field


def make_batch(samples: Sequence[Sample], dtype: torch.dtype) -> Batch:
    graph = collate([s.graph for s in samples], dtype=dtype)
    forces = None
    if all(s.forces is not None for s in samples):
        forces = torch.tensor(np.concatenate([s.forces for s in samples]), dtype=dtype)
    stress = stress_mask = None
    if any(s.stress is not None for s in samples):
        stress = torch.tensor(
            np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in samples]),
            dtype=dtype,
        )
        stress_mask = torch.tensor([s.stress is not None for s in samples])
    apt = None
    if all(s.apt is not None for s in samples):
        apt = torch.tensor(np.concatenate([s.apt for s in samples]), dtype=dtype)
    electric_field = None
    if any(s.electric_field is not None for s in samples):
        electric_field = torch.tensor(
            np.stack(
                [np.zeros(3) if s.electric_field is None else s.electric_field for s in samples]
            ),
            dtype=dtype,
        )
    return Batch(
        graph=graph,
        # float64: a label of -10^6 eV in float32 is rounded by 0.06 eV
        energy=torch.tensor([s.energy for s in samples], dtype=torch.float64),
        num_atoms=torch.tensor([s.num_atoms for s in samples], dtype=torch.float64),
        forces=forces,
        stress=stress,
        stress_mask=stress_mask,
        config_types=[s.config_type for s in samples],
        apt=apt,
        electric_field=electric_field,
    )
