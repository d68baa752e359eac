"""Export: TorchScript archives with metadata (the only package that knows TorchScript
files), the staged module, and the reference driver of the staged contract."""

from .archive import ExportError, export_model, load_exported, read_metadata
from .driver import RankSystem, evaluate_ranks, split_into_ranks
from .staged import ExportedLorem

__all__ = [
    "ExportError",
    "ExportedLorem",
    "RankSystem",
    "evaluate_ranks",
    "export_model",
    "load_exported",
    "read_metadata",
    "split_into_ranks",
]
