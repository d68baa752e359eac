"""One call surface: every model answers a graph alike.

`predict(model, graph, stress, electric_field)` takes a Lorem or LoremBEC (eager, through
models/outputs.py) or an export (its scripted `compute`: the same wrappers, scripted) and
returns one dict keyed by keys.py, detached:

    energy [S], energies [N], forces [N, 3], charges [N, C], potentials [N, C];
    virial [S, 3, 3] and stress [S, 3, 3] when stress is True;
    apt [N, 3, 3] for models with the Born-charge head (LoremBEC).

electric_field [S, 3] (or [3] for every structure; V/A) adds Z*_i E to the forces of a
model with the head. The ASE calculator, lorem-eval's predictor and (through the
calculator) the i-PI client are unit handling around this one function; training calls
the wrappers itself because it differentiates through them.
"""

from typing import Dict

import torch

from . import keys
from .export.loading import export_outputs
from .models import Lorem
from .models.outputs import output_model


def predict(
    model,
    graph: Dict[str, torch.Tensor],
    stress: bool,
    electric_field: torch.Tensor | None = None,
) -> Dict[str, torch.Tensor]:
    if isinstance(model, torch.jit.ScriptModule):
        out = export_outputs(model, graph, stress, electric_field)
    elif isinstance(model, Lorem):
        wrapper = output_model(model)
        options = {} if electric_field is None else {"electric_field": electric_field}
        out = wrapper(**graph, compute_forces=True, compute_stress=stress, **options)
    else:
        raise TypeError(f"expected a Lorem or an exported module, got {type(model)}")
    return {key: value.detach() for key, value in out.items() if key != keys.SLAB}
