"""Names of the fields of a graph dict, each with its shape.

N atoms in the batch, P directed pairs (edges i <- j), S structures, C charge
channels (1 scalar + (max_degree_lr + 1)**2 spherical = 10 by default).
"""

# -- inputs --
POSITIONS = "positions"  # [N, 3] float, Angstrom
ATOMIC_NUMBERS = "atomic_numbers"  # [N] int64
CELL = "cell"  # [S, 3, 3] float, lattice vectors in rows; zeros when non-periodic
PBC = "pbc"  # [S] bool, True: periodic in all three directions
CENTERS = "centers"  # [P] int64, i of the pair (the atom that receives)
OTHERS = "others"  # [P] int64, j of the pair
CELL_SHIFTS = "cell_shifts"  # [P, 3] float, integer lattice shifts: r_ij = r_j - r_i + S @ cell
ATOM_STRUCTURE = "atom_structure"  # [N] int64, structure index of every atom
STRUCTURE_OFFSETS = "structure_offsets"  # [S + 1] int64, atoms of s are offsets[s]:offsets[s+1]
# optional (present when some structure of the batch is a 2D slab; not in INPUT_KEYS):
SLAB = "slab"  # [S] bool, True: periodic along x and y only (its PBC entry is True)

# -- outputs --
ENERGY = "energy"  # [S] total energy, eV
ENERGIES = "energies"  # [N] per-atom energies (baseline included), eV
FORCES = "forces"  # [N, 3] eV / Angstrom
VIRIAL = "virial"  # [S, 3, 3] dE/d(strain), eV (ASE stress = virial / volume)
STRESS = "stress"  # [S, 3, 3] eV / Angstrom^3
CHARGES = "charges"  # [N, C] learned charges (scalar, then l = 0, 1, 2 components)
POTENTIALS = "potentials"  # [N, C] long-range potentials (half the physical potential)
APT = "apt"  # [N, 3, 3] Born effective charges Z*_i[a, b] = dF_i[a] / dE[b], elementary charges

INPUT_KEYS = (
    POSITIONS,
    ATOMIC_NUMBERS,
    CELL,
    PBC,
    CENTERS,
    OTHERS,
    CELL_SHIFTS,
    ATOM_STRUCTURE,
    STRUCTURE_OFFSETS,
)
