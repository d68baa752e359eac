"""Modules with exact derived constants.

Tabulated constants (Clebsch-Gordan coefficients, basis changes, binomials) are
kept as float64 master copies and re-derived after every dtype or device move, so
that a model built in float32 and moved to float64 carries float64-exact
constants rather than float32 ones cast up.
"""

from typing import Dict

import torch


class ConstantsModule(torch.nn.Module):
    """A module whose non-persistent buffers registered by `register_constant` are
    recast from float64 master copies on every `.to()`/`.double()`/`.cuda()`."""

    __jit_ignored_attributes__ = ["_float64_constants", "_always_float64"]

    def __init__(self):
        super().__init__()
        self._float64_constants: Dict[str, torch.Tensor] = {}
        self._always_float64: set = set()

    def register_constant(
        self,
        name: str,
        value: torch.Tensor,
        persistent: bool = False,
        always_float64: bool = False,
    ):
        """always_float64: the buffer stays float64 whatever the module's dtype (the
        energy baseline: hundreds of eV per atom that float32 would round by 3e-5 eV)."""
        master = value.detach().to(torch.float64) if value.is_floating_point() else value.detach()
        self._float64_constants[name] = master
        if always_float64:
            self._always_float64.add(name)
        keep = always_float64 or not master.is_floating_point()
        initial = master if keep else master.to(torch.get_default_dtype())
        self.register_buffer(name, initial, persistent=persistent)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # a loaded persistent constant (the energy baseline) becomes the new master
        for name in self._float64_constants:
            if prefix + name in state_dict:
                self._float64_constants[name] = state_dict[prefix + name].detach().to(torch.float64)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, master in self._float64_constants.items():
            current = getattr(self, name)
            dtype = torch.float64 if name in self._always_float64 else current.dtype
            setattr(self, name, master.to(device=current.device, dtype=dtype))
        return self
