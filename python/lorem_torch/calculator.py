"""ASE calculator over a LOREM model (the only module that knows ASE calculators)."""

import torch
from ase.calculators.calculator import Calculator, all_changes

from . import keys
from .data import DEFAULT_MIN_DISTANCE, atoms_to_graph
from .models import EnergyModel


class LoremCalculator(Calculator):
    """Energy, per-atom energies, forces and (periodic cells) stress of a LOREM model.

    Extra results: "charges" [N, C] and "potentials" [N, C] of the long range.
    Computes in the model's dtype unless `dtype` is given.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dtype is None:
            dtype = next(model.parameters()).dtype
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(dtype=dtype, device=self.device)
        self.energy_model = EnergyModel(self.model)
        self.min_distance = min_distance

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph = atoms_to_graph(
            [self.atoms],
            self.model.cutoff,
            dtype=self.dtype,
            device=self.device,
            min_distance=self.min_distance,
        )
        self.model.check_species(graph[keys.ATOMIC_NUMBERS])
        periodic = bool(self.atoms.pbc.all())
        out = self.energy_model(**graph, compute_forces=True, compute_stress=periodic)
        energy = float(out[keys.ENERGY][0].detach())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out[keys.ENERGIES].detach().cpu().double().numpy(),
            "forces": out[keys.FORCES].detach().cpu().double().numpy(),
            "charges": out[keys.CHARGES].detach().cpu().double().numpy(),
            "potentials": out[keys.POTENTIALS].detach().cpu().double().numpy(),
        }
        if periodic:
            stress = out[keys.STRESS][0].detach().cpu().double().numpy()
            stress = 0.5 * (stress + stress.T)
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress is only defined for periodic cells")


__all__ = ["LoremCalculator"]
