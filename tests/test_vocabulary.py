"""The names, settings and bounds shared by the layers are stated once per language
(python/lorem_torch/vocabulary.py, cpp/include/lorem/vocabulary.hpp), and the two
copies agree."""

import ast
import re
from pathlib import Path

import pytest
import torch
from ase import Atoms

from lorem_torch import vocabulary
from lorem_torch.data import structure_to_graph
from lorem_torch.errors import AtomsTooCloseError
from lorem_torch.long_range.accuracy import check_accuracy
from lorem_torch.long_range.settings import long_range_settings

core = pytest.importorskip("lorem_torch._core")
ROOT = Path(__file__).resolve().parents[1]


def test_cpp_dtypes_are_the_python_ones():
    cpp = core.vocabulary.DTYPES
    assert list(cpp) == list(vocabulary.DTYPES) == list(vocabulary.DTYPE_NAMES)
    for name, dtype in vocabulary.DTYPES.items():
        element = torch.empty((), dtype=dtype)
        assert cpp[name] == (element.element_size(), element.is_floating_point()), name
        assert vocabulary.dtype_name(dtype) == name


def test_cpp_long_range_names_are_the_python_ones():
    cpp = core.vocabulary
    assert cpp.LONG_RANGE_METHODS == vocabulary.LONG_RANGE_METHODS
    assert (cpp.EWALD, cpp.PME, cpp.AUTO) == (vocabulary.EWALD, vocabulary.PME, vocabulary.AUTO)
    assert cpp.NO_LONG_RANGE == vocabulary.NO_LONG_RANGE
    assert cpp.DIRECT_SUM == vocabulary.DIRECT_SUM
    assert cpp.NO_LONG_RANGE not in cpp.LONG_RANGE_METHODS


def test_cpp_accuracy_bound_and_versions_are_the_python_ones():
    cpp = core.vocabulary
    assert cpp.MAX_ACCURACY == vocabulary.MAX_ACCURACY
    assert 0.0 < vocabulary.DEFAULT_ACCURACY <= vocabulary.MAX_ACCURACY
    assert cpp.EXPORT_FORMAT == vocabulary.EXPORT_FORMAT
    assert cpp.EXPORT_FORMAT_VERSION == vocabulary.EXPORT_FORMAT_VERSION
    assert cpp.CONTRACT_VERSION == vocabulary.CONTRACT_VERSION
    assert cpp.EXACT_SCALAR_NORMS == vocabulary.EXACT_SCALAR_NORMS
    assert vocabulary.NUMERICS == [vocabulary.EXACT_SCALAR_NORMS]


def test_python_consumers_use_the_vocabulary():
    # the bound, where the settings check it
    assert check_accuracy(vocabulary.MAX_ACCURACY) == vocabulary.MAX_ACCURACY
    with pytest.raises(ValueError, match="must lie in"):
        check_accuracy(vocabulary.MAX_ACCURACY * 1.01)
    assert long_range_settings(None)["accuracy"] == vocabulary.DEFAULT_ACCURACY
    for method in vocabulary.LONG_RANGE_METHODS:
        assert long_range_settings(method)["method"] == method
    with pytest.raises(ValueError, match="must be one of"):
        long_range_settings("p3m")

    # the minimum distance, where the data checks refuse pairs
    def pair(factor):
        return Atoms("H2", positions=[[0, 0, 0], [0, 0, factor * vocabulary.DEFAULT_MIN_DISTANCE]])

    with pytest.raises(AtomsTooCloseError):
        structure_to_graph(pair(0.99), 5.0)
    assert len(structure_to_graph(pair(1.01), 5.0)["atomic_numbers"]) == 2


# Restatements that the vocabulary replaced: none may come back. Python is searched in
# its code without docstrings and comments (ast.unparse writes strings with ' quotes).
PYTHON_COPIES = [
    r"'float32'\s*:\s*torch\.float32",
    r"[\[(]\s*'float32',\s*'float64'\s*[\])]",
    r"'ewald',\s*'pme'",
    r"^\s*(DEFAULT_ACCURACY|MAX_ACCURACY|DEFAULT_MIN_DISTANCE|METHODS|DTYPES)\s*=",
    r"^\s*\w*FORMAT_VERSION\s*=|^\s*CONTRACT_VERSION\s*=",
    r"'lorem-torch-(export|checkpoint)'",
]
CPP_COPIES = [r'"float(32|64)"', r'"ewald"', r'"pme"', r"\b1e-2\b", r'"lorem-torch-export"']


def _python_code(path: Path) -> str:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _copies(paths, patterns, code):
    found = []
    for path in paths:
        for line in code(path).splitlines():
            if any(re.search(p, line) for p in patterns):
                found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    return found


def test_no_copies_of_the_vocabulary():
    python = [
        p for p in (ROOT / "python" / "lorem_torch").rglob("*.py") if p.name != "vocabulary.py"
    ]
    cpp = [
        p
        for folder in ("cpp/src", "cpp/include/lorem", "lammps_plugin")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".cpp", ".hpp", ".h") and p.name not in ("vocabulary.hpp", "json.hpp")
    ]
    assert len(python) > 20 and len(cpp) > 5
    assert _copies(python, PYTHON_COPIES, _python_code) == []
    # C++ without // comments
    assert _copies(cpp, CPP_COPIES, lambda p: re.sub(r"//.*", "", p.read_text())) == []
