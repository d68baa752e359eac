"""Every name, setting and bound that more than one layer reads, stated once.

The C++ runtime and the LAMMPS plugin hold their copy in cpp/include/lorem/vocabulary.hpp;
lorem_torch._core exposes it, and tests/test_vocabulary.py checks that both agree.
Everything else imports from here.
"""

from typing import Dict, Tuple

import torch

# The precisions a model computes in: the commands' --dtype strings and an export
# contract's "dtype" -> torch dtype.
DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
DTYPE_NAMES: Tuple[str, ...] = tuple(DTYPES)

# The k-space methods of the long range for periodic cells (the `long_range.method`
# setting, lorem-export --long-range, pair_style lorem long_range): Ewald, smooth
# particle-mesh Ewald, or the cheaper of the two by the cost model (long_range/settings.py).
EWALD, PME, AUTO = "ewald", "pme", "auto"
LONG_RANGE_METHODS: Tuple[str, ...] = (EWALD, PME, AUTO)
# The contract's method of a model without long range, and its non-periodic method
# (the direct sum) with and without long range.
NO_LONG_RANGE = "none"
DIRECT_SUM = "direct"

# The accuracy target of the k-space sums: relative error of the long-range potentials
# and fields (long_range/accuracy.py). At the default the lorem-jax parity fixtures and
# the PME-Ewald agreement tests pass with their tolerances, and Ewald keeps about a
# third of the reference grid's k-vectors. Targets outside (0, MAX_ACCURACY] are
# refused: coarser ones give potentials with errors of several per cent, which no fit
# should be trained on.
DEFAULT_ACCURACY = 1e-6
MAX_ACCURACY = 1e-2

# Pairs of atoms closer than this (Angstrom) are refused: the features are singular.
# The data checks, the calculator and the export contract (which the C++ runtime and
# LAMMPS read) use it.
DEFAULT_MIN_DISTANCE = 0.1

# Format markers and versions of the files lorem-torch writes. A reader refuses newer
# versions; an export older than EXPORT_FORMAT_VERSION is refused too (export again).
CHECKPOINT_FORMAT = "lorem-torch-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
EXPORT_FORMAT = "lorem-torch-export"
EXPORT_FORMAT_VERSION = 2  # 2: the contract
# 2: long_range.slab and slab_factor (written only when slab is granted; a contract
# that grants no slab keeps version 1, which older runtimes read as before)
CONTRACT_VERSION = 2
# The contract's "numerics": fixes of the model's own numbers that an export carries in
# its archived code. An export without one was written before it (consumers warn).
# exact-scalar-norms: degree-0 norms |x0| without a tolerance (float32 forces were off by
# up to 7e-2 eV/A on a few atoms per thousand; docs/design.md 1.1).
EXACT_SCALAR_NORMS = "exact-scalar-norms"
NUMERICS = [EXACT_SCALAR_NORMS]


def torch_dtype(value) -> torch.dtype | None:
    """None, torch.float32/float64 or one of DTYPE_NAMES -> the torch dtype (or None);
    ValueError naming the allowed values otherwise."""
    if value is None or value in DTYPES.values():
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise ValueError(
        f"dtype must be {' or '.join(map(repr, DTYPE_NAMES))} (or torch.float32/float64), "
        f"got {value!r}"
    )


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32" (the name an export's contract and --dtype use)."""
    return str(dtype).replace("torch.", "")
