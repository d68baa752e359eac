"""Load lorem-jax (flax) parameters into a lorem_torch.Lorem.

Conventions mapped here, once:
- flax Dense kernels are [in, out], as ours (no transposition);
- e3x.nn.Dense has one kernel per degree, named "{l}{parity}" ("0+", "1-", ...):
  they stack into our DegreeWiseDense kernel [L+1, in, out];
- e3x.nn.Tensor kernels [1, L1+1, 1, L2+1, 1, L3+1, F] (one parity channel, no
  pseudotensors) reshape to our [L1+1, L2+1, L3+1, F]; parity-violating paths are
  masked in both;
- the spherical basis and the Clebsch-Gordan normalisation are e3x's in the model
  itself (nn/spherical.py), so no weight needs rescaling.

flax names submodules by class and creation order (Dense_0, Dense_1, ...; e3x's
Dense shares the "Dense" counter with flax's). `parameter_names` replays the
creation order of lorem-jax's Lorem.__call__ to find each name.
"""

from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np
import torch

from ..models.bec import LoremBEC
from ..models.lorem import DEFAULT_HYPERPARAMETERS, EquivariantMessagePassingStep, Lorem

SUPPORTED_OPTIONS = set(DEFAULT_HYPERPARAMETERS)
IGNORED_OPTIONS = {"inputs"}
# lorem-jax model classes (the key of model.yaml) -> our kinds
MODEL_KINDS = {"Lorem": "lorem", "LoremBEC": "bec"}


class UnsupportedJaxOptionError(ValueError):
    """A lorem-jax hyperparameter or value that lorem-torch does not implement."""


class JaxParameterError(KeyError):
    """A parameter is missing from, or left over in, the flax parameter tree."""


class _Names:
    """flax's automatic naming: one counter per class name within the parent."""

    def __init__(self):
        self.counts: Dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        index = self.counts.get(kind, 0)
        self.counts[kind] = index + 1
        return f"{kind}_{index}"


Assignment = Tuple[str, torch.Tensor, Callable[[np.ndarray], np.ndarray]]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _tensor_kernel(x: np.ndarray) -> np.ndarray:
    if x.shape[0] != 1 or x.shape[2] != 1 or x.shape[4] != 1:
        raise UnsupportedJaxOptionError(
            f"tensor kernel of shape {x.shape} has pseudotensor channels, which lorem-torch "
            "does not implement"
        )
    return x.reshape(x.shape[1], x.shape[3], x.shape[5], x.shape[6])


def _dense(prefix: str, layer, assignments: List[Assignment]) -> None:
    assignments.append((f"{prefix}/kernel", layer.kernel, _same))
    if layer.bias is not None:
        assignments.append((f"{prefix}/bias", layer.bias, _same))


def _mlp(prefix: str, mlp, assignments: List[Assignment]) -> None:
    for index, layer in enumerate(mlp.layers):
        _dense(f"{prefix}/Dense_{index}", layer, assignments)


def _update(prefix: str, update, assignments: List[Assignment]) -> None:
    _mlp(f"{prefix}/MLP_0", update.mlp_in, assignments)
    for name, norm in (("LayerNorm_0", update.norm_in), ("LayerNorm_1", update.norm_self)):
        assignments.append((f"{prefix}/{name}/scale", norm.scale, _same))
        assignments.append((f"{prefix}/{name}/bias", norm.bias, _same))
    _mlp(f"{prefix}/MLP_1", update.mlp_self, assignments)


def _degree_wise(prefix: str, dense, assignments: List[Assignment]) -> None:
    if dense.bias is not None:  # e3x puts the bias on the scalar channel only
        assignments.append((f"{prefix}/0+/bias", dense.bias, _same))
    for l in range(dense.max_degree + 1):
        parity = "+" if l % 2 == 0 else "-"
        target = dense.kernel

        def pick(x: np.ndarray, l=l, target=target) -> Tuple[int, np.ndarray]:
            return l, x

        assignments.append((f"{prefix}/{l}{parity}/kernel", target, pick))


def _tensor(prefix: str, tensor, assignments: List[Assignment]) -> None:
    assignments.append((f"{prefix}/kernel", tensor.kernel, _tensor_kernel))


def _even_output_tensor_kernel(x: np.ndarray) -> np.ndarray:
    # [1, L1+1, 1, L2+1, 1 or 2, L3+1, F]: inputs without pseudotensors, the output's
    # parity axis (2 with include_pseudotensors=True, unless an input has degree 0);
    # lorem-jax keeps only index 0 (even parity) of the output, so the odd half is unused
    if x.shape[0] != 1 or x.shape[2] != 1:
        raise UnsupportedJaxOptionError(
            f"tensor kernel of shape {x.shape} has pseudotensor inputs, which lorem-torch "
            "does not implement"
        )
    return x[0, :, 0, :, 0, :, :]


def _atomic_tensor_head(prefix: str, head, assignments: List[Assignment]) -> None:
    """lorem-jax's PerParticleTensorPredictor: Dense_0..2 (e3x), then TensorDense_0."""
    _degree_wise(f"{prefix}/Dense_0", head.dense_in, assignments)
    _degree_wise(f"{prefix}/Dense_1", head.dense_hidden, assignments)
    _degree_wise(f"{prefix}/Dense_2", head.dense_out, assignments)
    _degree_wise(f"{prefix}/TensorDense_0/dense", head.coupling.dense, assignments)
    assignments.append(
        (
            f"{prefix}/TensorDense_0/tensor/kernel",
            head.coupling.tensor.kernel,
            _even_output_tensor_kernel,
        )
    )


def parameter_names(model: Lorem) -> List[Assignment]:
    """(flax path, our parameter, conversion) for every parameter, in lorem-jax's order."""
    names = _Names()
    out: List[Assignment] = []
    out.append(("Initial_0/ChemicalEmbedding_0/Embed_0/embedding", model.embedding, _same))
    _mlp(f"{names('RadialCoefficients')}/MLP_0", model.radial_coefficients.mlp, out)
    if model.node_init is not None:
        _dense(names("Dense"), model.node_init, out)
    _dense(names("Dense"), model.edge_to_node, out)
    _update(names("Update"), model.update_scalar, out)
    _dense(names("Dense"), model.spherical_coefficients, out)
    prefix = names("TensorDense")
    _degree_wise(f"{prefix}/dense", model.self_tensor.dense, out)
    _tensor(f"{prefix}/tensor", model.self_tensor.tensor, out)
    _update(names("Update"), model.update_spherical, out)
    _mlp(names("MLP"), model.energy_head, out)
    for step in model.message_passing:
        _mlp(f"{names('RadialCoefficients')}/MLP_0", step.radial_coefficients.mlp, out)
        _dense(names("Dense"), step.edge_to_node, out)
        _update(names("Update"), step.update_scalar, out)
        if isinstance(step, EquivariantMessagePassingStep):
            _dense(names("Dense"), step.spherical_coefficients, out)
            prefix = names("MessagePass")
            _degree_wise(f"{prefix}/filter", step.filter, out)
            _tensor(f"{prefix}/tensor", step.message_tensor, out)
            # e3x.nn.Tensor(...) is constructed before its two Dense arguments
            _tensor(names("Tensor"), step.combine, out)
            _degree_wise(names("Dense"), step.self_dense, out)
            _degree_wise(names("Dense"), step.message_dense, out)
            _update(names("Update"), step.update_spherical, out)
        _mlp(names("MLP"), step.energy_head, out)
    block = model.long_range
    if block is not None:
        _mlp(names("MLP"), block.charge_head, out)
        prefix = names("TensorDense")
        _degree_wise(f"{prefix}/dense", block.charge_tensor.dense, out)
        _tensor(f"{prefix}/tensor", block.charge_tensor.tensor, out)
        _degree_wise(names("Dense"), block.potential_mixing, out)
        _tensor(names("Tensor"), block.potential_tensor, out)
        _update(names("Update"), block.update_lr, out)
        _mlp(names("MLP"), block.energy_head, out)
    if isinstance(model, LoremBEC):
        # the heads have their own name counter, in creation order: initial block,
        # message-passing steps, long range
        heads = [model.apt_initial, *model.apt_steps]
        if model.apt_long_range is not None:
            heads.append(model.apt_long_range)
        for head in heads:
            _atomic_tensor_head(names("PerParticleTensorPredictor"), head, out)
    return out


def check_hyperparameters(hyperparameters: Mapping) -> Dict:
    """The keyword arguments for Lorem, or a named error for what is not supported."""
    unknown = set(hyperparameters) - SUPPORTED_OPTIONS - IGNORED_OPTIONS
    if unknown:
        raise UnsupportedJaxOptionError(
            f"lorem-jax options {sorted(unknown)} are not supported by lorem-torch"
        )
    inputs = hyperparameters.get("inputs", ())
    if inputs:
        raise UnsupportedJaxOptionError(
            f"lorem-jax models with extra inputs {list(inputs)} are not supported"
        )
    return {k: v for k, v in hyperparameters.items() if k in SUPPORTED_OPTIONS}


def from_jax_params(
    flat_params: Mapping[str, np.ndarray],
    hyperparameters: Mapping,
    species: List[int] | None = None,
    baseline: Dict[int, float] | None = None,
    dtype: torch.dtype = torch.float32,
    kind: str = "lorem",
) -> Lorem:
    """A Lorem (kind "lorem", lorem-jax's Lorem) or LoremBEC (kind "bec", lorem-jax's
    LoremBEC) with the weights of a flat flax parameter dict {"Dense_0/kernel": array}.

    Keys may carry a leading "params/" (flax's collection name). Every flax
    parameter must be used and every model parameter set, or JaxParameterError.
    Hyperparameters left out take the defaults of the lorem-jax class of that kind.
    """
    params = {
        k[len("params/") :] if k.startswith("params/") else k: v for k, v in flat_params.items()
    }
    classes = {"lorem": Lorem, "bec": LoremBEC}
    if kind not in classes:
        raise UnsupportedJaxOptionError(f"model kind {kind!r} is not one of {sorted(classes)}")
    model = classes[kind](
        **check_hyperparameters(hyperparameters), species=species, baseline=baseline
    )
    model = model.to(dtype)
    used = set()
    with torch.no_grad():
        for name, target, convert in parameter_names(model):
            if name not in params:
                raise JaxParameterError(f"lorem-jax parameter {name!r} is missing")
            # a copy: msgpack arrays are read-only views, which torch warns about
            converted = convert(np.array(params[name], copy=True))
            if isinstance(converted, tuple):
                degree, value = converted
                destination = target[degree]
            else:
                value = converted
                destination = target
            if tuple(destination.shape) != tuple(value.shape):
                raise JaxParameterError(
                    f"lorem-jax parameter {name!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(destination.shape)}"
                )
            destination.copy_(torch.as_tensor(value, dtype=dtype))
            used.add(name)
    left_over = sorted(set(params) - used)
    if left_over:
        raise JaxParameterError(f"lorem-jax parameters not used by the model: {left_over[:10]}")
    return model


# -- lorem-jax checkpoint folders --


def read_flax_msgpack(path) -> Dict[str, np.ndarray]:
    """A flax msgpack file (flax.serialization) -> flat {"a/b/c": array}, without flax."""
    import msgpack

    def unpack_array(data: bytes) -> np.ndarray:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        return np.frombuffer(buffer, dtype=np.dtype(dtype_name.decode())).reshape(shape)

    def ext_hook(code: int, data: bytes):
        if code == 1:  # ndarray
            return unpack_array(data)
        if code == 3:  # numpy scalar, stored as a 0-d array
            return unpack_array(data)[()]
        if code == 2:  # complex
            real, imag = msgpack.unpackb(data)
            return complex(real, imag)
        raise JaxParameterError(f"unknown msgpack extension type {code} in {path}")

    with open(path, "rb") as f:
        tree = msgpack.unpackb(f.read(), ext_hook=ext_hook, raw=False, strict_map_key=False)

    flat: Dict[str, np.ndarray] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    return flat


def import_jax_checkpoint(folder, dtype: torch.dtype = torch.float32) -> Lorem:
    """A lorem-jax checkpoint folder (model/model.yaml, model/model.msgpack,
    model/baseline.yaml) -> a Lorem or LoremBEC with its weights, species and baseline."""
    from pathlib import Path

    import yaml

    folder = Path(folder)
    model_dir = folder / "model" if (folder / "model").is_dir() else folder
    for name in ("model.yaml", "model.msgpack"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing: not a lorem-jax checkpoint")
    spec = yaml.safe_load((model_dir / "model.yaml").read_text())
    spec = spec.get("model", spec)
    if len(spec) != 1:
        raise UnsupportedJaxOptionError(f"model.yaml names several models: {list(spec)}")
    ((class_name, hyperparameters),) = spec.items()
    kind = MODEL_KINDS.get(class_name.split(".")[-1])
    if kind is None:
        raise UnsupportedJaxOptionError(
            f"model class {class_name} is not supported (only lorem.Lorem and lorem.LoremBEC)"
        )
    species = baseline = None
    if (model_dir / "baseline.yaml").is_file():
        elemental = yaml.safe_load((model_dir / "baseline.yaml").read_text())["elemental"]
        baseline = {int(z): float(e) for z, e in elemental.items()}
        species = sorted(baseline)
    params = read_flax_msgpack(model_dir / "model.msgpack")
    return from_jax_params(
        params, hyperparameters or {}, species=species, baseline=baseline, dtype=dtype, kind=kind
    )


def import_jax_main(argv=None) -> None:
    """lorem-import-jax CHECKPOINT_DIR -o CHECKPOINT"""
    import argparse

    from ..checkpoint import save_checkpoint
    from ..commands import add_version, fail

    parser = argparse.ArgumentParser(
        prog="lorem-import-jax",
        description="Convert a lorem-jax checkpoint folder into a lorem-torch checkpoint.",
    )
    parser.add_argument("folder", help="lorem-jax checkpoint folder (holding model/model.yaml)")
    parser.add_argument("-o", "--output", required=True, help="lorem-torch checkpoint to write")
    add_version(parser)
    args = parser.parse_args(argv)
    try:
        model = import_jax_checkpoint(args.folder, dtype=torch.float32)
    except (FileNotFoundError, ValueError, KeyError) as error:
        fail("lorem-import-jax", error)
    save_checkpoint(args.output, model, metadata={"imported_from": str(args.folder)})
    print(f"wrote {args.output}: species {model.species}, {model.hyperparameters}")
