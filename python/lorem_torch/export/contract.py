"""The export contract: what an exported model is and what it can do, in one structure.

It is written once, by lorem-export, into the export's metadata.json (key "contract"),
and every consumer reads it there and nowhere else: the ASE calculator, the C++ runtime
(cpp/src/contract.cpp, a real JSON parser; also over simulated ranks, export/ranks.py)
and through it the LAMMPS plugin. A consumer that needs a
capability the contract does not grant refuses with the contract's own reason.

Fields (all plain JSON):
  version                 CONTRACT_VERSION
  species                 {"atomic_numbers": [Z...], "symbols": ["H", ...]}: what the
                          model knows; engines map their type names through `symbols`
  dtype, units            "float32" | "float64"; {"energy": "eV", "length": "Angstrom"}
  cutoff                  pairs i <- j closer than this enter the model (Angstrom)
  min_distance            pairs closer than this are refused (the features are singular)
  num_message_passing     T: layers after the initial block
  interaction_range       (T + 1) * cutoff: how far the short-range energy of an atom sees
  feature_exchange        {"layers": T, "width": d + (L+1)**2 s}: with domain
                          decomposition, ghosts one cutoff deep get their owners'
                          features before each of the T layers (forward communication,
                          `width` values per atom) and return their gradients after it
  num_charges             C: charge channels of the long range (0 without)
  long_range              {"method": default for periodic cells ("none" | "ewald" | "pme" |
                           "auto"), "methods": what the export can run, "accuracy",
                           "non_periodic": "direct" | "none", "smearing", "lr_wavelength",
                           "prefactor", "exponent", "slab": whether 2D slabs run (the
                           capability), "slab_factor": their k-space cell's height over
                           the cell's (docs/design.md section 2.1)}
  outputs                 what the model computes
  methods                 the TorchScript methods of the export (read from the module)
  capabilities            {name: bool}; for each false one, limitations[name] says why
  numerics                fixes of the model's numbers carried in the archived code
                          (vocabulary.NUMERICS); optional: older exports lack it and
                          consumers warn where that matters (stale_export_advisories)
"""

from typing import Any, Dict, List

import torch

from ..errors import LoremInputError
from ..long_range.settings import DEFAULT_SETTINGS
from ..vocabulary import (
    CONTRACT_VERSION,
    DEFAULT_MIN_DISTANCE,
    DIRECT_SUM,
    EWALD,
    EXACT_SCALAR_NORMS,
    LONG_RANGE_METHODS,
    NO_LONG_RANGE,
    NUMERICS,
    dtype_name,
)

# What a consumer may ask for. Each is granted or refused with a reason.
CAPABILITIES = (
    "periodic",  # fully periodic cells
    "non_periodic",  # open boundaries
    "slab",  # periodic along x and y only (exports made with long_range slab)
    "domain_decomposition",  # stages over MPI ranks with ghost atoms (LAMMPS)
    "electric_field",  # forces of an applied uniform field (needs Born effective charges)
)


class CapabilityError(LoremInputError):
    """The model cannot do what was asked; the message says why (from the contract)."""


def exported_methods(module: torch.jit.ScriptModule) -> List[str]:
    """The methods a scripted export really has (forward and the @torch.jit.export ones)."""
    names = set(module._c._method_names())
    return sorted(n for n in names if not n.startswith("_"))


def contract_of(model, dtype: torch.dtype, methods: List[str]) -> Dict[str, Any]:
    """The contract of a Lorem evaluated in `dtype` by a module with `methods`."""
    from ase.data import chemical_symbols

    hyper = model.hyperparameters
    layers = int(hyper["num_message_passing"])
    long_range = model.long_range is not None
    width = model.num_features + (model.max_degree + 1) ** 2 * model.spherical_features
    settings = getattr(model, "long_range_settings", DEFAULT_SETTINGS)
    # every export carries Ewald, and PME with "auto" when the model has a PME module
    methods_available = list(LONG_RANGE_METHODS) if getattr(model, "pme", None) else [EWALD]
    from ..models import LoremBEC

    bec = isinstance(model, LoremBEC)
    limitations: Dict[str, str] = {}
    slab = bool(settings.get("slab", False))
    if not slab:
        limitations["slab"] = (
            "2D slabs (periodic along x and y only) need an export made with slab "
            "(lorem-export --slab, or long_range: {slab: true}); this one runs fully periodic "
            "and open boundaries only"
        )
    if not bec:
        limitations["electric_field"] = (
            "the model has no Born effective charge head (train one with model.kind: bec)"
        )
    capabilities = {name: name not in limitations for name in CAPABILITIES}
    return {
        # version 2 adds the slab fields; a contract that grants no slab keeps version 1,
        # which older runtimes read as before (they would run a slab as open boundaries)
        "version": CONTRACT_VERSION if slab else 1,
        "species": {
            "atomic_numbers": list(model.species),
            "symbols": [chemical_symbols[z] for z in model.species],
        },
        "dtype": dtype_name(dtype),
        "units": {"energy": "eV", "length": "Angstrom"},
        "cutoff": float(model.cutoff),
        "min_distance": DEFAULT_MIN_DISTANCE,
        "num_message_passing": layers,
        "interaction_range": float(model.cutoff) * (layers + 1),
        "feature_exchange": {"layers": layers, "width": width if layers else 0},
        "num_charges": int(model.num_charges),
        "long_range": {
            "method": settings["method"] if long_range else NO_LONG_RANGE,
            "methods": methods_available if long_range else [],
            "accuracy": float(settings["accuracy"]),
            "non_periodic": DIRECT_SUM if long_range else NO_LONG_RANGE,
            "conventions": "jax-pme (lorem-jax 0.2.0): potentials carry the factor 1/2",
            "smearing": float(model.smearing),
            "lr_wavelength": float(model.lr_wavelength),
            "prefactor": float(model.ewald.prefactor),
            "exponent": 1,
            "slab": slab,
            "slab_factor": float(settings.get("slab_factor", DEFAULT_SETTINGS["slab_factor"])),
        },
        "outputs": ["energy", "energies", "forces", "virial", "charges", "potentials"]
        + (["born_effective_charges"] if bec else []),
        "methods": sorted(methods),
        "capabilities": capabilities,
        "limitations": {k: v for k, v in limitations.items() if not capabilities[k]},
        "numerics": list(NUMERICS),
    }


def stale_export_advisories(contract: Dict[str, Any], name: str) -> List[str]:
    """What an export written before a fix of the model's numbers gets wrong, one line
    each (the C++ runtime's copy: Contract::advisories, cpp/src/contract.cpp)."""
    numerics = contract.get("numerics", [])
    advisories = []
    if contract["dtype"] == "float32" and EXACT_SCALAR_NORMS not in numerics:
        advisories.append(
            f"{name} is a float32 export written before the fix of scalar feature norms "
            "(lorem-torch CHANGELOG): its forces can be off by up to ~0.07 eV/A on a few atoms "
            "per thousand; export the checkpoint again with lorem-export"
        )
    return advisories


def require(contract: Dict[str, Any], capability: str, where: str = "") -> None:
    """Raise CapabilityError with the contract's reason unless `capability` is granted."""
    if capability not in contract["capabilities"]:
        raise CapabilityError(f"unknown capability {capability!r}")
    if not contract["capabilities"][capability]:
        reason = contract["limitations"].get(capability, "not supported by this model")
        raise CapabilityError(f"{where}{': ' if where else ''}{reason}")


def check_contract(contract: Any, name: str, error=ValueError) -> Dict[str, Any]:
    """Structure of a contract read from a file; raises `error` naming what is wrong."""
    if not isinstance(contract, dict):
        raise error(f"{name}: the export has no contract (export it again with lorem-export)")
    version = contract.get("version")
    if not isinstance(version, int) or version > CONTRACT_VERSION:
        raise error(
            f"{name}: contract version {version} is newer than this lorem-torch reads "
            f"({CONTRACT_VERSION}): update lorem-torch"
        )
    for key in (
        "species",
        "dtype",
        "units",
        "cutoff",
        "min_distance",
        "num_message_passing",
        "interaction_range",
        "feature_exchange",
        "num_charges",
        "long_range",
        "methods",
        "capabilities",
        "limitations",
    ):
        if key not in contract:
            raise error(f"{name}: the export's contract lacks '{key}'")
    numerics = contract.get("numerics", [])
    if not isinstance(numerics, list) or not all(isinstance(x, str) for x in numerics):
        raise error(f"{name}: the export's contract has numerics {numerics!r}, not a list of names")
    if contract["units"] != {"energy": "eV", "length": "Angstrom"}:
        raise error(f"{name}: units {contract['units']} are not eV and Angstrom")
    return contract
