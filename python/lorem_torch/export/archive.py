"""lorem-export: one TorchScript archive with a JSON metadata entry, checked on load.

The archive holds ExportedLorem (export/staged.py) and the extra file
`metadata.json`: format and version, library versions, hyperparameters, baseline, a
SHA-256 hash of the weights, the export date, and the contract (export/contract.py:
species, units, dtype, cutoff, ranges, long range, methods, capabilities), which is
what every consumer reads.
"""

import datetime
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from ..checkpoint import (
    CheckpointError,
    atomic_write,
    check_document,
    library_versions,
    model_file_kind,
    model_from_checkpoint,
)
from ..models import LoremBEC
from ..vocabulary import (
    DTYPE_NAMES,
    DTYPES,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    LONG_RANGE_METHODS,
    NO_LONG_RANGE,
)
from .contract import check_contract, contract_of, exported_methods, stale_export_advisories
from .staged import ExportedLorem, ExportedLoremBEC

METADATA_FILE = "metadata.json"


class ExportError(ValueError):
    """A file that is not a lorem-torch export, or one this version cannot use."""


class StaleExportWarning(UserWarning):
    """An export written before a fix of the model's numbers: it runs, and the message
    says what it gets wrong and how to write it again."""


def weight_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def metadata_of(model, dtype: torch.dtype, methods) -> Dict[str, Any]:
    """Provenance (versions, hyperparameters, weights, date) and the contract."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "versions": library_versions(),
        "hyperparameters": model.hyperparameters,
        "baseline": model.config()["baseline"],
        "weight_sha256": weight_hash(model),
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "contract": contract_of(model, dtype, methods),
    }


def export_model(
    source: str | Path | torch.nn.Module,
    path: str | Path,
    dtype: str = "float32",
    long_range: str | Dict[str, Any] | None = None,
) -> Dict[str, Any]:
    """Script a model (or a checkpoint's) into `path`, atomically; returns the metadata.

    `long_range` (a method name or some of {method, accuracy, max_memory_gb, slab,
    slab_factor}) is given over the model's own settings before export
    (long_range/settings.py)."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be {' or '.join(DTYPE_NAMES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    if isinstance(source, torch.nn.Module):
        model = source
        model = model_from_checkpoint(
            {"model": model.config(), "state_dict": model.state_dict()}, dtype=torch_dtype
        )
    else:
        model = model_from_checkpoint(source, dtype=torch_dtype)
    # a diverged training's NaN would reach every engine as NaN forces: refuse it here
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise ExportError(
            f"the model has non-finite weights ({', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}): did its training diverge? export a checkpoint "
            "from before (lorem-train keeps best.pt)"
        )
    if long_range is not None:
        try:
            model = model.with_long_range(long_range)
        except ValueError as error:
            raise ExportError(str(error)) from None
    model.eval()
    exported = ExportedLoremBEC(model) if isinstance(model, LoremBEC) else ExportedLorem(model)
    scripted = torch.jit.script(exported)
    metadata = metadata_of(model, torch_dtype, exported_methods(scripted))
    atomic_write(
        path,
        lambda temporary: torch.jit.save(
            scripted, temporary, _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)}
        ),
    )
    return metadata


def read_metadata(path: str | Path) -> Dict[str, Any]:
    """The metadata of an export, checked: a clear ExportError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        kind = model_file_kind(path)
    except CheckpointError as error:  # empty, truncated, not a PyTorch file
        raise ExportError(str(error)) from None
    if kind == "checkpoint":
        raise ExportError(
            f"{path} is a lorem-torch training checkpoint, not a TorchScript archive: "
            f"export it first (lorem-export {path} -o model.pt)"
        )
    extra = {METADATA_FILE: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:
        # libtorch's text: its first sentence (the rest is advice about checkpoints)
        first_line = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        unknown = re.search(r"Unknown builtin op: (lorem::\w+)", str(error))
        if unknown:
            raise ExportError(
                f"{path} calls the operator {unknown.group(1)}, which this lorem-torch does "
                "not have: it was exported by a newer lorem-torch; install that version (or "
                "export the checkpoint again with this one)"
            ) from error
        raise ExportError(
            f"{path} cannot be loaded: it is truncated or corrupt, or not a lorem-torch export "
            f"({first_line})"
        ) from error
    if not extra[METADATA_FILE]:
        raise ExportError(
            f"{path} is a TorchScript archive but not a lorem-torch export (no {METADATA_FILE})"
        )
    return check_metadata(json.loads(extra[METADATA_FILE]), str(path))


def check_metadata(metadata: Dict[str, Any], name: str) -> Dict[str, Any]:
    check_document(
        metadata, EXPORT_FORMAT, EXPORT_FORMAT_VERSION, "export", name, ("contract",), ExportError
    )
    if metadata["format_version"] < EXPORT_FORMAT_VERSION:
        raise ExportError(
            f"{name} has export format version {metadata['format_version']}, older than this "
            f"lorem-torch reads ({EXPORT_FORMAT_VERSION}): export the checkpoint again with "
            "lorem-export"
        )
    check_contract(metadata["contract"], name, ExportError)
    return metadata


def load_exported(
    path: str | Path, device: str = "cpu"
) -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """Load an export after checking its metadata; returns (module, metadata). An
    export written before a fix of the model's numbers is loaded with a StaleExportWarning
    naming what it gets wrong."""
    metadata = read_metadata(path)
    for advisory in stale_export_advisories(metadata["contract"], str(path)):
        warnings.warn(advisory, StaleExportWarning, stacklevel=2)
    module = torch.jit.load(str(path), map_location=device)
    return module, metadata


def export_main(argv=None) -> None:
    import argparse

    from ..commands import add_version, fail

    parser = argparse.ArgumentParser(
        prog="lorem-export",
        description="Export a lorem-torch checkpoint to a TorchScript file for LAMMPS and C++.",
    )
    parser.add_argument("checkpoint", help="training checkpoint (best.pt, last.pt, ...)")
    parser.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32", help="precision (default: float32)"
    )
    parser.add_argument(
        "--long-range",
        choices=LONG_RANGE_METHODS,
        help="k-space method of the export (default: the checkpoint's own, usually ewald; "
        "auto: PME above ~1,000 atoms); LAMMPS may pick another with pair_style lorem "
        "long_range",
    )
    parser.add_argument(
        "--accuracy",
        type=float,
        help="long-range accuracy target, relative (default: the checkpoint's own, 1e-6); "
        "pair_style lorem accuracy must match it",
    )
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        help="refuse k-space grids or meshes estimated above this (default: the checkpoint's, 8)",
    )
    parser.add_argument(
        "--slab",
        action="store_true",
        default=None,
        help="run structures periodic along x and y only (LAMMPS boundary p p f) as 2D slabs: "
        "k-space over the cell extended along z plus the dipole correction (default: the "
        "checkpoint's own long_range slab, usually off: such boxes are refused)",
    )
    parser.add_argument(
        "--slab-factor",
        type=float,
        help="height of a slab's k-space cell over its cell's (default: the checkpoint's, 3.0; "
        "as LAMMPS kspace_modify slab)",
    )
    add_version(parser)
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in (
            ("method", args.long_range),
            ("accuracy", args.accuracy),
            ("max_memory_gb", args.max_memory_gb),
            ("slab", args.slab),
            ("slab_factor", args.slab_factor),
        )
        if value is not None
    }
    try:
        metadata = export_model(args.checkpoint, args.output, args.dtype, overrides or None)
    except (FileNotFoundError, CheckpointError, ExportError) as error:
        fail("lorem-export", error)
    contract = metadata["contract"]
    long_range = contract["long_range"]
    described = (
        NO_LONG_RANGE
        if long_range["method"] == NO_LONG_RANGE
        else f"{long_range['method']} (accuracy {long_range['accuracy']:g})"
    )
    if long_range.get("slab"):
        described += f", 2D slabs with slab_factor {long_range['slab_factor']:g}"
    print(
        f"wrote {args.output}: species {contract['species']['symbols']}, cutoff "
        f"{contract['cutoff']} A, {contract['num_message_passing']} message-passing layers, "
        f"long range {described}, {contract['dtype']}, "
        f"weights {metadata['weight_sha256'][:12]}"
    )
