"""Loading whatever a user gives: a Lorem, a training checkpoint or an export."""

from pathlib import Path
from typing import Dict

import torch

from .. import keys
from ..models import Lorem
from ..models.bec import field_forces
from ..vocabulary import DTYPES, dtype_name
from .archive import load_exported
from .contract import contract_of


def load_any(model, dtype: torch.dtype | None = None):
    """A Lorem, a checkpoint path or an export path -> (Lorem or the export's TorchScript
    module, dtype, contract). The one place that tells them apart for every consumer."""
    if isinstance(model, (str, Path)):
        from ..checkpoint import model_file_kind, model_from_checkpoint

        if model_file_kind(model) == "checkpoint":
            model = model_from_checkpoint(model, dtype=dtype)
        else:
            module, metadata = load_exported(model)
            contract = metadata["contract"]
            export_dtype = DTYPES[contract["dtype"]]
            if dtype is not None and dtype != export_dtype:
                raise ValueError(
                    f"{model} was exported in {contract['dtype']}; export it again with "
                    f"--dtype {dtype_name(dtype)} to compute in that precision"
                ) from None
            return module, export_dtype, contract
    if not isinstance(model, Lorem):
        raise TypeError(f"expected a Lorem, a checkpoint or an exported file, got {type(model)}")
    dtype = dtype or next(model.parameters()).dtype
    return model.to(dtype), dtype, contract_of(model, dtype, methods=[])


def export_outputs(
    module: torch.jit.ScriptModule,
    graph: Dict[str, torch.Tensor],
    stress: bool,
    electric_field: torch.Tensor | None = None,
) -> Dict[str, torch.Tensor]:
    """An export's outputs of a graph, keyed as the eager model's (lorem_torch.predict):
    its scripted `compute`; exports written before it existed answer through the methods
    they have (energy_forces_virial, born_effective_charges), with the same numbers."""
    if hasattr(module, "compute"):
        return module.compute(graph, stress, electric_field)
    inputs = [graph[k] for k in keys.INPUT_KEYS]
    if keys.SLAB in graph:  # exports made without slab take no such argument
        inputs.append(graph[keys.SLAB])
    energy, energies, forces, virial, charges, potentials = module.energy_forces_virial(*inputs)
    out = {
        keys.ENERGY: energy,
        keys.ENERGIES: energies,
        keys.FORCES: forces,
        keys.CHARGES: charges,
        keys.POTENTIALS: potentials,
    }
    if stress:
        pbc = graph[keys.PBC][:, None, None]
        volume = torch.abs(torch.linalg.det(graph[keys.CELL]))[:, None, None]
        out[keys.VIRIAL] = virial
        out[keys.STRESS] = torch.where(pbc, virial / torch.where(pbc, volume, 1.0), 0.0)
    if hasattr(module, "born_effective_charges"):
        apt = module.born_effective_charges(*inputs)
        out[keys.APT] = apt
        if electric_field is not None:
            field = electric_field.to(apt.dtype)
            if field.dim() == 2:
                field = field[graph[keys.ATOM_STRUCTURE]]
            out[keys.FORCES] = forces + field_forces(apt, field)
    return out
