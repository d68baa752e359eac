"""Named errors for bad input, each a ValueError so that generic handlers still work.

Errors raised inside the model, which may run as exported TorchScript where they arrive
wrapped in an interpreter traceback, start with a stable code ("[lorem:memory] ..."):
`coded_line` finds that one line again, `reraise_coded` turns it back into the named
error, and the C++ runtime (cpp/src/model.cpp) does the same for LAMMPS.
"""

import re

MEMORY_CODE = "[lorem:memory]"  # a long-range grid over the memory limit
COST_CODE = "[lorem:cost]"  # a warning: a long-range grid estimated slow
CELL_CODE = "[lorem:cell]"  # a k-space method given a cell without volume
ELEMENT_CODE = "[lorem:element]"  # an atomic number the model does not know

# where the memory limit of an export is set (the C++ runtime says the same)
EXPORT_MEMORY_SETTING = (
    "the memory limit is fixed in the export: export again with lorem-export --max-memory-gb"
)

_CODED = re.compile(r"\[lorem:[a-z]+\] [A-Za-z][^\n]*")


class LoremInputError(ValueError):
    """Base class: the input cannot be evaluated, and the message says why."""


class UnknownElementError(LoremInputError):
    """An atomic number that the model was not trained on."""


class NonFiniteError(LoremInputError):
    """NaN or infinite positions, cell or labels."""


class DegenerateCellError(LoremInputError):
    """A periodic cell with (near) zero volume."""


class AtomsTooCloseError(LoremInputError):
    """Two atoms closer than the stated minimum distance."""


class EmptyStructureError(LoremInputError):
    """A structure without atoms."""


class UnsupportedPeriodicityError(LoremInputError):
    """Periodic in some but not all directions (2D slabs are not supported yet)."""


class NotPeriodicError(LoremInputError):
    """A k-space long-range method (Ewald, PME) asked for a structure without a periodic cell."""


class LongRangeTooLargeError(LoremInputError):
    """A long-range grid (Ewald k-vectors or PME mesh) that would exceed the memory limit."""


class MissingAPTHeadError(LoremInputError):
    """A field or APT labels given to a model without a Born-effective-charge head."""


_ERROR_OF_CODE = {
    MEMORY_CODE: LongRangeTooLargeError,
    CELL_CODE: NotPeriodicError,
    ELEMENT_CODE: UnknownElementError,
}


def coded_line(text: str) -> str | None:
    """The coded message in `text` (a TorchScript error with its traceback), from the
    code to the end of its line; the last one, since the traceback may quote code."""
    found = _CODED.findall(text)
    return found[-1].strip() if found else None


def with_advice(message: str, memory_setting: str | None) -> str:
    """A memory error's message with the name of the setting that raises the limit
    where the user is (e.g. "model.long_range.max_memory_gb")."""
    if memory_setting and message.startswith(MEMORY_CODE):
        return message + " (" + memory_setting + ")"
    return message


def reraise_coded(error: Exception, memory_setting: str | None = None) -> None:
    """Raise the named error of a coded message in `error` (one line, with the memory
    setting of the caller); return if there is none."""
    line = coded_line(str(error))
    if line is None:
        return
    kind = next((k for code, k in _ERROR_OF_CODE.items() if line.startswith(code)), None)
    raise (kind or LoremInputError)(with_advice(line, memory_setting)) from None
