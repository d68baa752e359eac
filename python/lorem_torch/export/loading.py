"""Loading whatever a user gives: a Lorem, a training checkpoint or an export."""

from pathlib import Path

import torch

from ..models import Lorem
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
