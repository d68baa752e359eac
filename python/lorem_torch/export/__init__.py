"""Export: TorchScript archives with metadata (the only package that knows TorchScript
files), the staged module, and a system split over ranks for the C++ runtime's simulated
ranks."""

from .archive import ExportError, StaleExportWarning, export_model, load_exported, read_metadata
from .contract import CapabilityError, contract_of, require
from .loading import load_any
from .ranks import RankResult, RankSystem, evaluate_ranks, split_into_ranks
from .staged import ExportedLorem

__all__ = [
    "CapabilityError",
    "ExportError",
    "ExportedLorem",
    "RankResult",
    "RankSystem",
    "StaleExportWarning",
    "contract_of",
    "evaluate_ranks",
    "export_model",
    "load_any",
    "load_exported",
    "read_metadata",
    "require",
    "split_into_ranks",
]
