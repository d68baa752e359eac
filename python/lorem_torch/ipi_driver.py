"""lorem-ipi: a client of an i-PI server (the socket driver protocol) over LoremCalculator.

i-PI (path-integral MD, replica exchange, thermostats, ...) sends positions and cells
over a socket and expects energies, forces and virials back. This is the client side
of its protocol, written from the protocol description (no i-PI code needed):

  every message starts with a 12-byte ASCII header, padded with spaces;
  STATUS   -> reply NEEDINIT (before INIT), READY, or HAVEDATA (after POSDATA)
  INIT     <- int32 bead index, int32 length, that many bytes (init string)
  POSDATA  <- cell h [3, 3] (lattice vectors in columns, float64, C order), its inverse,
              int32 number of atoms, positions [N, 3] float64 (Bohr)
              (with "batch_size:B" in the init string, B > 1: int32 N, B blocks of
              h and h^-1, then B position arrays)
  GETFORCE -> FORCEREADY, float64 energy (Hartree), int32 N, forces [N, 3] (Hartree/Bohr),
              virial [3, 3] (Hartree), int32 length + bytes of a JSON "extras" string
              (batched: B energies, N, B force arrays, B virials, B extras)
  EXIT     the server is done: the client exits cleanly.

Units are converted with i-PI's own factors (ipi/utils/units.py), so that the energies
i-PI reports in eV are exactly the calculator's. Species and atom order come from a
template structure (i-PI sends positions only), as for i-PI's own ASE driver.
With a LoremBEC the extras carry the Born effective charges as "BEC" [3N, 3] (rows
3 i + a hold Z*_i[a, :]), as lorem-jax's i-PI driver does.
"""

import argparse
import json
import socket
import sys
import time

import numpy as np

from .vocabulary import DTYPE_NAMES

HEADER_LENGTH = 12
# i-PI's conversion factors (ipi/utils/units.py: "angstrom", "electronvolt", "ev/ang")
BOHR_PER_ANGSTROM = 1.8897261
HARTREE_PER_EV = 0.036749326
HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM = 0.019446904
DEFAULT_SOCKETS_PREFIX = "/tmp/ipi_"  # i-PI's default for unix sockets


class IPIConnectionError(ConnectionError):
    """No i-PI server at the given address, or the connection broke mid-message."""


class IPIProtocolError(RuntimeError):
    """A message that does not follow i-PI's socket protocol."""


def _header(text: str) -> bytes:
    return text.ljust(HEADER_LENGTH).encode()


def connect(
    address: str | None = None,
    unix: str | None = None,
    sockets_prefix: str = DEFAULT_SOCKETS_PREFIX,
    wait: float = 0.0,
) -> socket.socket:
    """A socket connected to i-PI: `address` "host:port" (inet) or `unix` NAME (the
    socket file sockets_prefix + NAME, i-PI's convention). Retries for `wait` seconds."""
    if (address is None) == (unix is None):
        raise ValueError("give either an inet address host:port or a unix socket name")
    if unix is not None:
        target = sockets_prefix + unix
        family, where = socket.AF_UNIX, f"unix socket {target}"
    else:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address must be host:port, got {address!r}")
        target = (host, int(port))
        family, where = socket.AF_INET, f"{host}:{port}"
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            # the protocol's many small messages: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(target)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, socket.gaierror, OSError) as error:
            sock.close()
            if time.monotonic() >= deadline:
                raise IPIConnectionError(
                    f"no i-PI server at {where} ({error.strerror or error}); start i-PI first "
                    "(its <ffsocket> must use the same address), or give --wait SECONDS"
                ) from error
            time.sleep(0.2)


class IPIClient:
    """Serves i-PI's requests with an ASE calculator for the atoms of `template`."""

    def __init__(self, calculator, template, sock: socket.socket, log=print):
        self.calculator = calculator
        self.atoms = template.copy()
        self.atoms.calc = None
        self.periodic = bool(self.atoms.pbc.all())
        self.sock = sock
        self.log = log
        self.initialized = False
        self.batch_size = 1
        self.results = None  # [(energy, forces, virial, extras)] of the last POSDATA
        self.evaluations = 0

    # -- bytes --

    def _receive(self, size: int, at_boundary: bool = False) -> bytes | None:
        chunks, left = [], size
        while left > 0:
            chunk = self.sock.recv(left)
            if not chunk:
                if at_boundary and left == size:
                    return None
                raise IPIConnectionError(
                    f"i-PI closed the connection in the middle of a message "
                    f"({size - left} of {size} bytes received)"
                )
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self._receive(dtype.itemsize * count), dtype=dtype, count=count)

    def _int(self) -> int:
        return int(self._array(np.int32, 1)[0])

    # -- the loop --

    def run(self) -> int:
        """Serve until i-PI sends EXIT or closes the connection; returns the number of
        structures evaluated."""
        while True:
            raw = self._receive(HEADER_LENGTH, at_boundary=True)
            if raw is None:
                self.log(f"i-PI closed the connection after {self.evaluations} evaluations")
                return self.evaluations
            header = raw.decode(errors="replace").strip()
            if header == "STATUS":
                if not self.initialized:
                    self.sock.sendall(_header("NEEDINIT"))
                elif self.results is not None:
                    self.sock.sendall(_header("HAVEDATA"))
                else:
                    self.sock.sendall(_header("READY"))
            elif header == "INIT":
                self._init()
            elif header == "POSDATA":
                self._positions()
            elif header == "GETFORCE":
                self._send_forces()
            elif header == "EXIT":
                self.log(f"i-PI sent EXIT after {self.evaluations} evaluations")
                return self.evaluations
            else:
                raise IPIProtocolError(f"unexpected message {raw!r} from i-PI")

    def _init(self) -> None:
        self._int()  # bead (replica) index: every replica is the same model
        text = self._receive(self._int()).decode(errors="replace")
        for token in text.split(","):
            key, separator, value = token.partition(":")
            if separator and key.strip() == "batch_size" and value.strip().isdigit():
                self.batch_size = int(value.strip())
        self.initialized = True

    def _positions(self) -> None:
        if not self.initialized:
            raise IPIProtocolError("i-PI sent POSDATA before INIT")
        if self.batch_size > 1:
            num_atoms = self._int()
            cells = self._array(np.float64, 18 * self.batch_size).reshape(self.batch_size, 2, 3, 3)
            positions = self._array(np.float64, 3 * num_atoms * self.batch_size)
            positions = positions.reshape(self.batch_size, num_atoms, 3)
            self.results = [self._evaluate(cells[b, 0], positions[b]) for b in range(len(cells))]
        else:
            cell = self._array(np.float64, 9).reshape(3, 3)
            self._array(np.float64, 9)  # the inverse cell: not needed
            num_atoms = self._int()
            positions = self._array(np.float64, 3 * num_atoms).reshape(num_atoms, 3)
            self.results = [self._evaluate(cell, positions)]

    def _evaluate(self, cell_h: np.ndarray, positions: np.ndarray):
        """(energy Ha, forces Ha/Bohr [N, 3], virial Ha [3, 3], extras JSON) of one structure
        given i-PI's cell h (vectors in columns) and positions in Bohr."""
        atoms = self.atoms
        if len(positions) != len(atoms):
            raise IPIProtocolError(
                f"i-PI sent {len(positions)} atoms but the template has {len(atoms)}: give the "
                "template of the structure i-PI runs (same atoms, same order)"
            )
        atoms.positions = positions / BOHR_PER_ANGSTROM
        if self.periodic:
            atoms.set_cell(cell_h.T / BOHR_PER_ANGSTROM, scale_atoms=False)
        properties = ["energy", "forces", "stress"] if self.periodic else ["energy", "forces"]
        self.calculator.calculate(atoms, properties)
        results = self.calculator.results
        energy = results["energy"] * HARTREE_PER_EV
        forces = np.asarray(results["forces"], dtype=np.float64)
        forces = forces * HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
        virial = np.zeros((3, 3))
        if self.periodic:
            stress = np.asarray(results["stress"])  # Voigt xx yy zz yz xz xy, eV/A^3
            xx, yy, zz, yz, xz, xy = stress
            matrix = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            virial = (-matrix * atoms.get_volume()).T * HARTREE_PER_EV
        extras = ""
        if "born_effective_charges" in results:
            bec = np.asarray(results["born_effective_charges"]).reshape(-1, 3)
            extras = json.dumps({"BEC": bec.tolist()})
        self.evaluations += 1
        return float(energy), np.ascontiguousarray(forces), np.ascontiguousarray(virial), extras

    def _send_forces(self) -> None:
        if self.results is None:
            raise IPIProtocolError("i-PI asked for forces before sending positions")
        results, self.results = self.results, None
        num_atoms = np.int32(len(results[0][1]))
        parts = [_header("FORCEREADY")]
        if self.batch_size > 1:
            parts.append(np.array([r[0] for r in results], dtype=np.float64).tobytes())
            parts.append(num_atoms.tobytes())
            parts += [r[1].tobytes() for r in results]
            parts += [r[2].tobytes() for r in results]
        else:
            energy, forces, virial, _ = results[0]
            parts += [np.float64(energy).tobytes(), num_atoms.tobytes()]
            parts += [forces.tobytes(), virial.tobytes()]
        for result in results:
            extras = result[3].encode()
            parts += [np.int32(len(extras)).tobytes(), extras]
        self.sock.sendall(b"".join(parts))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lorem-ipi",
        description="Serve an i-PI simulation with a lorem-torch model (checkpoint or export).",
    )
    parser.add_argument("model", help="checkpoint (.pt from lorem-train) or exported model")
    parser.add_argument(
        "--template",
        required=True,
        help="structure file with the atoms i-PI simulates, in its order (species, periodicity)",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="inet socket of the i-PI server, host:port")
    where.add_argument("--unix", metavar="NAME", help="unix socket NAME (i-PI's <address>)")
    parser.add_argument(
        "--sockets-prefix",
        default=DEFAULT_SOCKETS_PREFIX,
        help=f"folder/prefix of unix sockets (i-PI's default {DEFAULT_SOCKETS_PREFIX})",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="default: the model's")
    parser.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin (A)")
    parser.add_argument(
        "--electric-field",
        nargs=3,
        type=float,
        metavar=("EX", "EY", "EZ"),
        help="uniform field in V/A: adds Z* E to the forces (models of kind bec)",
    )
    parser.add_argument(
        "--wait", type=float, default=0.0, help="seconds to keep trying to reach the server"
    )
    args = parser.parse_args(argv)

    import ase.io

    from .calculator import LoremCalculator

    try:
        template = ase.io.read(args.template)
        calculator = LoremCalculator(
            args.model,
            device=args.device,
            dtype=args.dtype,
            skin=args.skin,
            electric_field=args.electric_field,
        )
        sock = connect(args.address, args.unix, args.sockets_prefix, args.wait)
    except (IPIConnectionError, ValueError, FileNotFoundError) as error:
        print(f"lorem-ipi: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"lorem-ipi: connected to i-PI; {len(template)} atoms, device {args.device}", flush=True)
    try:
        with sock:
            IPIClient(calculator, template, sock, log=lambda m: print(f"lorem-ipi: {m}")).run()
    except (IPIConnectionError, IPIProtocolError, ValueError) as error:
        print(f"lorem-ipi: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
