"""The device mesh and the mapping from logical axes to mesh axes.

Mesh axes are `data`, `fsdp` and `tensor`. Parameters and activations are
annotated with logical axes (`batch`, `length`, `embed`, `heads`, `kv`,
`mlp`, `vocab`); the rules in `config.mesh.axis_rules` map each logical axis
to a mesh axis, or to None for replication.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# The logical axes that parameters and activations are annotated with.
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab")
BATCH_MESH_AXES = ("data", "fsdp")  # The batch is split over both.


def resolve_mesh_shape(mesh_config, device_count: int) -> tuple[int, ...]:
    """Return the mesh shape, with a -1 axis sized to use every device.

    Raises:
      ValueError: an axis is not a positive size or -1, more than one axis is
        -1, or the shape does not fit `device_count`.
    """
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    for axis, size in zip(MESH_AXES, sizes, strict=True):
        if size == 0 or size < -1:
            raise ValueError(
                f"mesh.{axis}={size} is invalid; use a positive size, or -1 to "
                "take every device not used by the other axes."
            )
    if sizes.count(-1) > 1:
        raise ValueError(
            f"Only one mesh axis may be -1, got mesh shape {dict(zip(MESH_AXES, sizes, strict=True))}."
        )
    fixed = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if device_count % fixed:
            raise ValueError(
                f"The fixed mesh axes use {fixed} devices, which does not divide "
                f"the {device_count} available; change mesh.* so their product "
                f"divides {device_count}."
            )
        sizes[sizes.index(-1)] = device_count // fixed
    total = math.prod(sizes)
    if total > device_count:
        raise ValueError(
            f"Mesh shape {dict(zip(MESH_AXES, sizes, strict=True))} needs {total} "
            f"devices but {device_count} are available; reduce mesh.data, "
            "mesh.fsdp or mesh.tensor, or set one of them to -1 to use every "
            "device."
        )
    return tuple(sizes)


def make_mesh(mesh_config) -> Mesh:
    """Build a mesh over the first `prod(shape)` devices."""
    devices = jax.devices()
    shape = resolve_mesh_shape(mesh_config, len(devices))
    chosen = np.asarray(devices[: math.prod(shape)]).reshape(shape)
    return Mesh(chosen, MESH_AXES)


def axis_rules(mesh_config) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """Return the logical-to-mesh rules as the tuple Flax expects."""
    return tuple(
        (logical, tuple(mesh) if isinstance(mesh, list | tuple) else mesh)
        for logical, mesh in mesh_config.axis_rules
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shard the leading (batch) dimension over the data and fsdp axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_MESH_AXES)
