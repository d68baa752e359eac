"""CUDA check of the Born-effective-charge path (for a machine with a GPU): LoremBEC's
energy, forces with a field and APT on CUDA equal those on the CPU (float64), and the
acoustic sum rule holds there; then the timing of bench_ipi.py can follow.

    .venv/bin/python benchmarks/check_bec_cuda.py
"""

from pathlib import Path

import ase.io
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main():
    from lorem_torch import LoremCalculator
    from lorem_torch.models import LoremBEC

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    torch.manual_seed(0)
    model = LoremBEC(species=[1, 8], num_features=32, max_degree=4).double()
    with torch.no_grad():  # an APT of order one
        for head in (model.apt_initial, model.apt_long_range):
            head.coupling.tensor.kernel.mul_(1e3)
    atoms = ase.io.read(ROOT / "examples/data/water-64.xyz", "0")
    field = (0.1, -0.2, 0.3)
    results = {}
    for device in ("cpu", "cuda"):
        calc = LoremCalculator(model, device=device, electric_field=field)
        calc.calculate(atoms.copy(), ["energy", "forces", "stress"])
        results[device] = dict(calc.results)
    cpu, cuda = results["cpu"], results["cuda"]
    for key in ("energy", "forces", "stress", "born_effective_charges"):
        difference = float(np.abs(np.asarray(cpu[key]) - np.asarray(cuda[key])).max())
        scale = float(np.abs(np.asarray(cpu[key])).max())
        print(f"{key:24s} max |cuda - cpu| {difference:.2e} (scale {scale:.2e})")
        assert difference <= 1e-9 * max(scale, 1.0), key
    apt_sum = np.abs(cuda["born_effective_charges"].sum(axis=0)).max()
    print(f"acoustic sum rule on cuda: max |sum_i Z*_i| = {apt_sum:.2e}")
    assert apt_sum < 1e-10
    print("ok")


if __name__ == "__main__":
    main()
