"""Export: TorchScript archives with metadata (the only package that knows TorchScript
files), the staged module, and the reference driver of the staged contract."""

from .archive import ExportError, export_model, load_exported, read_metadata
from .contract import CapabilityError, contract_of, require
from .driver import RankSystem, evaluate_ranks, split_into_ranks
from .loading import load_any
from .staged import ExportedLorem

__all__ = [
    "CapabilityError",
    "ExportError",
    "ExportedLorem",
    "RankSystem",
    "contract_of",
    "evaluate_ranks",
    "export_model",
    "load_any",
    "load_exported",
    "read_metadata",
    "require",
    "split_into_ranks",
]
