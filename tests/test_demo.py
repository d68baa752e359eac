"""The README's main job (examples/demo.py: train, evaluate on held-out boxes, export,
LAMMPS on 1 and 2 ranks) runs end to end, shortened."""

import os
import subprocess
import sys

from conftest import ROOT


def test_demo_runs_end_to_end(tmp_path):
    output = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--epochs", "1", "--md-steps", "5"]
        + ["--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "errors on the 3 held-out boxes" in proc.stdout
    assert "steps per second: 1 rank(s)" in proc.stdout and "2 rank(s)" in proc.stdout
    # it says, first and last, that its model is a toy and what a converged one reaches
    assert proc.stdout.count("This is a toy model") == 2
    assert proc.stdout.rstrip().endswith("lorem-import-jax.")
    assert "30-55 meV/A" in proc.stdout and "docs/benchmarks.md" in proc.stdout
    assert (output / "model.pt").is_file() and (output / "train" / "best.pt").is_file()
