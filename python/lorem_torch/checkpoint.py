"""Checkpoints: everything needed to rebuild a model, as tensors and plain data.

A checkpoint is a `torch.save` file of a dict (no pickled modules; loaded with
weights_only=True):

    format          "lorem-torch-checkpoint"
    format_version  int (CHECKPOINT_FORMAT_VERSION, vocabulary.py, when written)
    versions        {"lorem_torch": ..., "torch": ..., "e3nn": ...}
    model           Lorem.config(): hyperparameters (lorem-jax names), species, baseline;
                    "kind": "bec" for a LoremBEC (absent for a Lorem)
    state_dict      the model's parameters and buffers
    training        optional: optimiser, scheduler, EMA and loop state for --resume
    metadata        optional: free-form plain data (where it came from, metrics)

Files are written atomically: to a temporary file in the same folder, flushed,
then renamed over the destination, so a crash never leaves a half-written file.
"""

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from .vocabulary import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION


class CheckpointError(ValueError):
    """A file that is not a lorem-torch checkpoint, or one this version cannot read."""


def library_versions() -> Dict[str, str]:
    import e3nn

    from . import __version__

    return {
        "lorem_torch": str(__version__),
        "torch": str(torch.__version__),
        "e3nn": str(e3nn.__version__),
    }


def check_document(document, marker: str, supported: int, kind: str, name: str, required, error):
    """Format marker, version (not newer than `supported`) and required keys of a
    checkpoint or export description; raises `error` naming what is wrong."""
    if not isinstance(document, dict) or document.get("format") != marker:
        raise error(f"{name} is not a lorem-torch {kind} (no '{marker}' format marker)")
    version = document.get("format_version")
    if not isinstance(version, int) or version > supported:
        raise error(
            f"{name} has {kind} format version {version}, newer than this lorem-torch "
            f"({library_versions()['lorem_torch']}) reads ({supported}): update lorem-torch"
        )
    for key in required:
        if key not in document:
            raise error(f"{name}: the {kind} lacks '{key}'")
    return document


def model_file_kind(path: str | Path) -> str:
    """ "checkpoint" (torch.save) or "export" (TorchScript archive), from the layout of
    the file alone; FileNotFoundError or CheckpointError with one line naming what is
    wrong with anything else (empty, truncated, not a PyTorch file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a model file (a lorem-jax checkpoint folder? convert "
            "it with lorem-import-jax)"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty")
    if head != b"PK\x03\x04":  # both kinds are zip archives
        raise CheckpointError(
            f"{path} is not a lorem-torch checkpoint or export (not a PyTorch zip archive)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt (an incomplete zip archive: {error}); copy or "
            "write it again"
        ) from None
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "export"
    if any(name.endswith("/data.pkl") for name in names):
        return "checkpoint"
    raise CheckpointError(f"{path} is a zip archive but neither a checkpoint nor an export")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call write(temporary_path), then rename it over `path` (same filesystem). The
    file gets the permissions the umask gives a new file (mkstemp alone makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_checkpoint(
    path: str | Path,
    model,
    training: Dict[str, Any] | None = None,
    metadata: Dict[str, Any] | None = None,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "versions": library_versions(),
        "model": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training": training,
        "metadata": metadata or {},
    }
    atomic_write(path, lambda temporary: torch.save(payload, temporary))


def load_checkpoint(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if model_file_kind(path) == "export":
        raise CheckpointError(
            f"{path} is an exported model (TorchScript), not a training checkpoint "
            "(best.pt, last.pt, or the output of lorem-import-jax)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign pickle, damaged data
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable lorem-torch checkpoint (torch.load: {first_line})"
        ) from error
    return check_document(
        payload,
        CHECKPOINT_FORMAT,
        CHECKPOINT_FORMAT_VERSION,
        "checkpoint",
        str(path),
        ("model", "state_dict"),
        CheckpointError,
    )


def model_from_checkpoint(
    checkpoint: str | Path | Dict[str, Any], dtype: torch.dtype | None = None
):
    """Rebuild the Lorem (or LoremBEC: model kind "bec") of a checkpoint (a path or a
    loaded payload)."""
    from .models import Lorem, LoremBEC

    payload = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    config = dict(payload["model"])
    baseline = {int(z): float(e) for z, e in config.pop("baseline", {}).items()}
    kind = config.pop("kind", "lorem")  # checkpoints without a kind hold a Lorem
    classes = {"lorem": Lorem, "bec": LoremBEC}
    if kind not in classes:
        raise CheckpointError(
            f"the checkpoint holds a model of kind {kind!r}, which this lorem-torch "
            f"does not know (known: {', '.join(classes)})"
        )
    model = classes[kind](**config, baseline=baseline)
    state = payload["state_dict"]
    if dtype is None:
        dtype = state["embedding"].dtype
    model = model.to(dtype)
    mismatched = [
        f"{name} {list(state[name].shape)} (model {list(tensor.shape)})"
        for name, tensor in model.state_dict().items()
        if name in state and state[name].shape != tensor.shape
    ]
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    problems = (
        mismatched + [f"{n} missing" for n in missing] + [f"{n} unexpected" for n in unexpected]
    )
    if problems:
        raise CheckpointError(
            f"the checkpoint's hyperparameters ({_summary(config)}) do not match its weights: "
            f"{len(problems)} tensors differ, first {problems[0]}"
        )
    model.load_state_dict(state, strict=True)
    return model


def _summary(config: Dict[str, Any]) -> str:
    keys = ("num_features", "max_degree", "num_radial", "num_spherical_features")
    return ", ".join(f"{k} {config[k]}" for k in keys if k in config)
