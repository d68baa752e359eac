"""Named errors for bad input, each a ValueError so that generic handlers still work."""


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
