"""Born effective charges and an applied field outside Python: the C++ runtime
(lorem_torch._core) and `pair_style lorem ... efield Ex Ey Ez` on 1 and 2 ranks, with
the acoustic sum rule over the whole system (a sum across ranks), against the ASE
calculator; per-atom Z* for dumps through `fix property/atom d2_bec 9`."""

import numpy as np
import pytest
from conftest import RUNTIME_DEVICE, cluster, cpp_evaluate, small_bec, small_model
from lammps_run import read_single_point, run, single_point_script, water_box, wrapped, write_data
from lorem_torch._core import LoremError, Model

from lorem_torch import LoremCalculator
from lorem_torch.export import export_model

FIELD = (0.3, -0.5, 0.7)  # V/A
SPECIES = ["O", "H"]


@pytest.fixture(scope="module")
def bec_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bec_exports")
    model = small_bec(num_message_passing=1, species=[1, 6, 8])
    export_model(model, folder / "bec.pt", "float64")
    return model, folder / "bec.pt"


@pytest.mark.parametrize("make", [lambda: water_box((1, 1, 1)), cluster], ids=["water", "cluster"])
def test_runtime_born_effective_charges_and_field(bec_export, make):
    model, path = bec_export
    atoms = make()
    calculator = LoremCalculator(model, electric_field=FIELD)
    forces = calculator.get_forces(atoms)
    apt = calculator.get_property("born_effective_charges", atoms)
    out = cpp_evaluate(
        Model(str(path), RUNTIME_DEVICE), atoms, electric_field=FIELD, born_effective_charges=True
    )
    np.testing.assert_allclose(out["born_effective_charges"], apt, atol=1e-10)
    np.testing.assert_allclose(out["born_effective_charges"].sum(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(out["forces"], forces, atol=1e-10)
    assert np.abs(apt).max() > 0.1  # the heads are exercised


def test_runtime_refuses_a_field_without_the_apt_head(tmp_path):
    path = tmp_path / "plain.pt"
    export_model(small_model(species=[1, 6, 8]), path, "float64")
    with pytest.raises(LoremError, match="no Born effective charge head"):
        cpp_evaluate(Model(str(path), RUNTIME_DEVICE), cluster(), electric_field=FIELD)


def bec_script(path):
    field = " ".join(str(x) for x in FIELD)
    script = single_point_script("system.data", path, SPECIES).replace(
        "pair_style lorem", f"pair_style lorem efield {field}"
    )
    columns = " ".join(f"d2_bec[{c}]" for c in range(1, 10))
    return script.replace(
        "compute pe_atom all pe/atom",
        "fix zstar all property/atom d2_bec 9\ncompute pe_atom all pe/atom\n"
        f"dump zstar all custom 1 bec.dump id {columns}\n"
        "dump_modify zstar format float %.16g sort id",
    )


def read_bec(folder):
    lines = (folder / "bec.dump").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    table = np.array([line.split() for line in lines[start + 1 :]], dtype=float)
    return table[:, 1:].reshape(-1, 3, 3)


@pytest.mark.parametrize("ranks", [1, 2])
def test_lammps_field_forces_and_per_atom_charges(bec_export, tmp_path, ranks):
    model, path = bec_export
    atoms = wrapped(water_box((2, 1, 1)))
    calculator = LoremCalculator(model, electric_field=FIELD)
    forces = calculator.get_forces(atoms)
    apt = calculator.get_property("born_effective_charges", atoms)
    energy = calculator.get_potential_energy(atoms)
    write_data(atoms, tmp_path / "system.data", SPECIES)
    _, output = run(tmp_path, bec_script(path), ranks)
    result = read_single_point(tmp_path, output)
    order = result["ids"] - 1
    assert result["energy"] == pytest.approx(energy, abs=1e-8)  # the field adds no energy
    np.testing.assert_allclose(result["forces"], forces[order], atol=1e-8)
    np.testing.assert_allclose(read_bec(tmp_path), apt[order], atol=1e-8)


def test_lammps_refuses_a_field_without_the_apt_head(tmp_path):
    path = tmp_path / "plain.pt"
    export_model(small_model(species=[1, 8]), path, "float64")
    write_data(wrapped(water_box((1, 1, 1))), tmp_path / "system.data", SPECIES)
    script = single_point_script("system.data", path, SPECIES).replace(
        "pair_style lorem", "pair_style lorem efield 0 0 0.1"
    )
    code, output = run(tmp_path, script, 1, check=False)
    assert code != 0
    assert "pair_style lorem efield: the model has no Born effective charge head" in output
