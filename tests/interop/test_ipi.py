"""lorem-ipi: the i-PI socket client, against a scripted server and against i-PI itself."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import ase.io
import numpy as np
import pytest
import torch
from conftest import ROOT

from lorem_torch import LoremCalculator
from lorem_torch.checkpoint import save_checkpoint
from lorem_torch.ipi_driver import (
    BOHR_PER_ANGSTROM,
    HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM,
    HARTREE_PER_EV,
    IPIClient,
    main,
)
from lorem_torch.models import Lorem, LoremBEC

WATER = ROOT / "examples" / "data" / "water-64.xyz"


def tiny(kind=Lorem, seed=0):
    torch.manual_seed(seed)
    model = kind(num_features=8, max_degree=2, num_spherical_features=2, num_radial=16)
    return model.double()


def message(text):
    return text.ljust(12).encode()


class ScriptedServer:
    """The server side of i-PI's protocol, written out by hand: sends requests, reads replies."""

    def __init__(self, sock):
        self.sock = sock

    def read(self, size):
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the client closed the connection"
            data += chunk
        return data

    def status(self):
        self.sock.sendall(message("STATUS"))
        return self.read(12).decode().strip()

    def init(self, text=""):
        self.sock.sendall(message("INIT") + np.int32(0).tobytes())
        self.sock.sendall(np.int32(len(text)).tobytes() + text.encode())

    def positions(self, cells_h, positions):
        if len(cells_h) == 1:
            h = cells_h[0]
            payload = h.tobytes() + np.linalg.inv(h).tobytes()
            payload += np.int32(len(positions[0])).tobytes() + positions[0].tobytes()
        else:
            payload = np.int32(len(positions[0])).tobytes()
            payload += b"".join(h.tobytes() + np.linalg.inv(h).tobytes() for h in cells_h)
            payload += b"".join(p.tobytes() for p in positions)
        self.sock.sendall(message("POSDATA") + payload)

    def forces(self, batch, num_atoms):
        self.sock.sendall(message("GETFORCE"))
        assert self.read(12) == message("FORCEREADY")
        energies = np.frombuffer(self.read(8 * batch), np.float64)
        assert np.frombuffer(self.read(4), np.int32)[0] == num_atoms
        forces = np.frombuffer(self.read(8 * 3 * num_atoms * batch), np.float64)
        virials = np.frombuffer(self.read(8 * 9 * batch), np.float64)
        extras = []
        for _ in range(batch):
            length = int(np.frombuffer(self.read(4), np.int32)[0])
            extras.append(self.read(length).decode())
        return energies, forces.reshape(batch, num_atoms, 3), virials.reshape(batch, 3, 3), extras


def serve(calculator, atoms, client_socket):
    result = {}

    def target():
        result["evaluations"] = IPIClient(
            calculator, atoms, client_socket, log=lambda m: None
        ).run()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("batch", [1, 2])
def test_protocol_units_and_conventions(batch):
    """Energies, forces and virials in i-PI's units and cell convention, one structure
    per request or batched, Born effective charges in the extras; EXIT ends the client."""
    model = tiny(LoremBEC)
    frames = ase.io.read(WATER, f":{batch}")
    server_socket, client_socket = socket.socketpair()
    thread, result = serve(LoremCalculator(model), frames[0], client_socket)
    server = ScriptedServer(server_socket)
    assert server.status() == "NEEDINIT"
    server.init(f"batch_size:{batch}" if batch > 1 else "")
    assert server.status() == "READY"
    cells_h = [atoms.cell.array.T * BOHR_PER_ANGSTROM for atoms in frames]  # vectors in columns
    server.positions(cells_h, [atoms.positions * BOHR_PER_ANGSTROM for atoms in frames])
    assert server.status() == "HAVEDATA"
    energies, forces, virials, extras = server.forces(batch, len(frames[0]))
    assert server.status() == "READY"
    server.sock.sendall(message("EXIT"))
    thread.join(timeout=30)
    assert result["evaluations"] == batch
    for b, atoms in enumerate(frames):
        atoms.calc = LoremCalculator(model)
        assert energies[b] / HARTREE_PER_EV == pytest.approx(
            atoms.get_potential_energy(), rel=1e-12
        )
        np.testing.assert_allclose(
            forces[b] / HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM, atoms.get_forces(), atol=1e-10
        )
        stress = atoms.get_stress(voigt=False)
        np.testing.assert_allclose(
            virials[b] / HARTREE_PER_EV, -stress * atoms.get_volume(), atol=1e-9
        )
        bec = np.array(json.loads(extras[b])["BEC"])
        np.testing.assert_allclose(
            bec, atoms.calc.results["born_effective_charges"].reshape(-1, 3), atol=1e-12
        )


def test_client_without_server_is_a_clear_error(tmp_path, capsys):
    save_checkpoint(tmp_path / "model.pt", tiny())
    ase.io.write(tmp_path / "template.xyz", ase.io.read(WATER, 0))
    argv = [str(tmp_path / "model.pt"), "--template", str(tmp_path / "template.xyz")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--unix", f"absent-{uuid.uuid4().hex[:8]}"])
    assert exit_info.value.code == 2
    assert "no i-PI server at unix socket" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--address", "127.0.0.1:9"])  # the discard port: nobody listens
    assert exit_info.value.code == 2
    assert "no i-PI server at 127.0.0.1:9" in capsys.readouterr().err


def test_server_closing_mid_message_is_a_clear_error():
    from lorem_torch.ipi_driver import IPIConnectionError

    server_socket, client_socket = socket.socketpair()
    server_socket.sendall(message("INIT") + np.int32(0).tobytes())
    server_socket.close()
    client = IPIClient(LoremCalculator(tiny()), ase.io.read(WATER, 0), client_socket)
    with pytest.raises(IPIConnectionError, match="middle of a message"):
        client.run()


IPI_INPUT = """<simulation verbosity="low" safe_stride="1000">
  <output prefix="sim">
    <properties stride="1" filename="out"> [ step, potential{{electronvolt}} ] </properties>
    <trajectory stride="1" filename="pos" format="ase"> positions </trajectory>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 31415 </seed></prng>
  <ffsocket name="lorem" mode="unix"><address> {name} </address></ffsocket>
  <system>
    <initialize nbeads="1">
      <file mode="ase"> init.extxyz </file>
      <velocities mode="thermal" units="kelvin"> 300 </velocities>
    </initialize>
    <forces><force forcefield="lorem"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond"> 0.5 </timestep>
        <thermostat mode="langevin"><tau units="femtosecond"> 50 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units="kelvin"> 300 </temperature></ensemble>
  </system>
</simulation>
"""


def test_ipi_nvt_run_records_the_calculator_energies(tmp_path):
    """i-PI's server drives a short NVT run of a 192-atom water box through lorem-ipi;
    the potential energies it records equal LoremCalculator's on its trajectory."""
    import ipi  # noqa: F401  (the server: pyproject's test extra)

    steps = 6
    model = tiny()
    save_checkpoint(tmp_path / "model.pt", model)
    start = ase.io.read(WATER, 0)
    start.calc = None
    ase.io.write(tmp_path / "init.extxyz", start, format="extxyz")
    name = f"lorem-test-{uuid.uuid4().hex[:10]}"
    (tmp_path / "input.xml").write_text(IPI_INPUT.format(steps=steps, name=name))
    socket_path = f"/tmp/ipi_{name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ipi_command = [os.path.join(os.path.dirname(sys.executable), "i-pi"), "input.xml"]
    server = subprocess.Popen(
        ipi_command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path):
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "i-PI did not open its socket"
            time.sleep(0.1)
        client = subprocess.run(
            [sys.executable, "-m", "lorem_torch.ipi_driver", str(tmp_path / "model.pt")]
            + ["--template", str(tmp_path / "init.extxyz"), "--unix", name],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        server_output = server.communicate(timeout=60)[0].decode()
    finally:
        if server.poll() is None:
            server.kill()
        if os.path.exists(socket_path):
            os.unlink(socket_path)
    assert client.returncode == 0, client.stderr + server_output[-3000:]
    assert "i-PI sent EXIT" in client.stdout  # a clean exit on the server's shutdown
    recorded = np.loadtxt(tmp_path / "sim.out", ndmin=2)
    frames = ase.io.read(tmp_path / "sim.pos_0.extxyz", ":")
    assert len(frames) == len(recorded) >= steps
    calculator = LoremCalculator(model)
    energies = []
    for frame in frames:
        atoms = start.copy()
        atoms.positions = frame.positions  # i-PI writes positions in A (ASE units)
        energies.append(calculator.get_potential_energy(atoms))
    # i-PI prints the potential with 9 significant digits and the positions with 8
    # decimals: agreement to 1e-7 relative (about 1e-6 eV here) is that precision
    scale = np.abs(energies).max()
    np.testing.assert_allclose(recorded[:, 1], energies, rtol=0, atol=1e-7 * scale + 1e-6)
    assert np.ptp(energies) > 1e-3  # the structures do move
