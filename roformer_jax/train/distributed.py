"""Multi-process training: starting `jax.distributed`, this process's share of
each batch, and work that only process 0 does.

Every process runs the same trainer. Each builds only its rows of every
global batch (see `process_batch_shard`), process 0 alone writes logs,
metrics and run files, and all processes take part in every checkpoint save
and restore, as Orbax requires.
"""

import dataclasses
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from roformer_jax.train import mesh as mesh_lib
from roformer_jax.train.validation import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Environment variables by which the cluster detection of JAX 0.10.2
# (jax/_src/clusters/) recognises a launcher. Cloud TPU VMs on GCE are found
# through the metadata server instead, see `detect_cluster`.
CLUSTER_ENVIRONMENT_VARIABLES: dict[str, tuple[str, ...]] = {
    # mpirun / mpiexec; all of them must be set.
    "Open MPI": ("OMPI_MCA_orte_hnp_uri",),
    # srun; all of them must be set.
    "Slurm": (
        "SLURM_JOB_ID",
        "SLURM_STEP_NODELIST",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
    ),
    # A TPU slice on GKE; either one is enough.
    "Cloud TPU on GKE": ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"),
    # A pod of an indexed Job or a JobSet. JAX checks KUBERNETES_SERVICE_HOST
    # alone, and reads its process id from JOB_COMPLETION_INDEX; requiring
    # both keeps single-process runs in an ordinary pod out of this path.
    "Kubernetes": ("KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX"),
}
_ANY_OF = {"Cloud TPU on GKE"}


class DistributedConfigError(ValueError):
    """The flags that start multi-process training are incomplete or invalid;
    the message names the flag and the fix."""


class FirstProcessError(RuntimeError):
    """Process 0 failed in work that it does for every process; process 0's
    log has the cause."""


def _running_on_cloud_tpu_vm() -> bool:
    # NOTE: private JAX state, set when `import jax` finds TPU chips and
    # libtpu; JAX 0.10.2 has no public way to ask this.
    from jax._src import cloud_tpu_init

    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _kubernetes_installed() -> bool:
    return importlib.util.find_spec("kubernetes") is not None


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the name of the cluster launcher that JAX would detect, or None.

    The launchers and their variables are in `CLUSTER_ENVIRONMENT_VARIABLES`.
    A Cloud TPU VM (a TPU pod slice on GCE) is reported as "Cloud TPU VM"
    when no launcher variable is set.
    """
    environ = os.environ if environ is None else environ
    for name, variables in CLUSTER_ENVIRONMENT_VARIABLES.items():
        present = [variable in environ for variable in variables]
        if any(present) if name in _ANY_OF else all(present):
            return name
    if _running_on_cloud_tpu_vm():
        return "Cloud TPU VM"
    return None


def _check_explicit_flags(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    flag_values = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    missing = [flag for flag, value in flag_values.items() if value is None]
    if missing:
        set_flags = ", ".join(
            f"{flag}={value}"
            for flag, value in flag_values.items()
            if value is not None
        )
        raise DistributedConfigError(
            f"{set_flags} given without {' and '.join(missing)}; pass all three "
            "of --coordinator_address, --num_processes and --process_id, or none "
            "of them."
        )
    host, separator, port = coordinator_address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedConfigError(
            f"--coordinator_address={coordinator_address!r} is not HOST:PORT; give "
            "the address of process 0 and a free port, such as 10.0.0.1:1234."
        )
    if num_processes < 1:
        raise DistributedConfigError(
            f"--num_processes={num_processes} is invalid; pass the number of "
            "processes in the run, at least 1."
        )
    if not 0 <= process_id < num_processes:
        raise DistributedConfigError(
            f"--process_id={process_id} is outside [0, {num_processes}) for "
            f"--num_processes={num_processes}; number the processes 0 to "
            f"{num_processes - 1}, with 0 on the coordinator's host."
        )


def _use_cpu_collectives() -> None:
    """Let multi-process CPU runs use Gloo for their collectives.

    JAX 0.10.2 already defaults to "gloo"; an explicit choice (such as "mpi")
    is kept. The setting only affects the CPU backend.
    """
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Start `jax.distributed` when the run has more than one process.

    Takes one of three paths and logs it on every process:

    - "explicit": all of `coordinator_address` (HOST:PORT of process 0),
      `num_processes` and `process_id` are given, and are passed on.
    - "cluster": none is given and `detect_cluster` finds a launcher (Open
      MPI, Slurm, Cloud TPU, Kubernetes). `jax.distributed.initialize()` then
      reads the process layout from the launcher itself.
    - "single": none is given and no launcher is found; nothing is started.

    Call it before anything else uses JAX, because `jax.distributed` must
    start before the backends do. Returns the path taken.

    Raises:
      DistributedConfigError: some but not all of the three values are given,
        the address is not HOST:PORT, num_processes is below 1, process_id
        is outside [0, num_processes), or a Kubernetes Job is detected without
        the `kubernetes` package that JAX needs there.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in explicit):
        _check_explicit_flags(coordinator_address, num_processes, process_id)
        _use_cpu_collectives()
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        logger.info(
            "Started jax.distributed from flags: process %d of %d, coordinator %s.",
            process_id,
            num_processes,
            coordinator_address,
        )
        return "explicit"
    cluster = detect_cluster(environ)
    if cluster == "Kubernetes" and not _kubernetes_installed():
        raise DistributedConfigError(
            "This process runs in an indexed Kubernetes Job, but JAX needs the "
            "`kubernetes` package to find the other processes; install it (pip "
            "install 'jax[k8s]') or pass --coordinator_address, --num_processes "
            "and --process_id."
        )
    if cluster is not None:
        _use_cpu_collectives()
        jax.distributed.initialize()
        logger.info(
            "Started jax.distributed from the %s environment: process %d of %d.",
            cluster,
            jax.process_index(),
            jax.process_count(),
        )
        return "cluster"
    logger.info(
        "Running as a single process: no --coordinator_address and no cluster "
        "launcher found."
    )
    return "single"


def quiet_other_processes() -> None:
    """Keep INFO logs to process 0: other processes log warnings and errors
    only, so a run prints one progress line per step, not one per process."""
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class BatchShard:
    """This process's share of every global batch of B rows: shard `index` of
    `count`, rows [index * B / count, (index + 1) * B / count)."""

    index: int = 0
    count: int = 1


# Every row of every batch: the shard of a single-process run.
WHOLE_BATCH = BatchShard()


@functools.lru_cache(maxsize=8)
def process_batch_shard(mesh: Mesh) -> BatchShard:
    """Return the rows of each batch that this process's devices keep in `mesh`.

    With data parallelism over processes, process i of P gets shard i of P.
    Processes whose devices keep the same rows (the batch is not split across
    them) get the same shard, so without data parallelism every process gets
    (0, 1).

    Raises:
      ValueError: this process has no device in the mesh, or its devices keep
        rows that are not one block in order, as happens when the mesh lists
        devices of several processes interleaved along its data axes.
    """
    parallel = mesh_lib.data_parallel_size(mesh)
    sharding = mesh_lib.batch_sharding(mesh)
    # One row per data-parallel shard, so each device's slice names its shard.
    indices = sharding.addressable_devices_indices_map((parallel,))
    held_shards = sorted({index[0].indices(parallel)[0] for index in indices.values()})
    if not held_shards:
        raise ValueError(
            f"Process {jax.process_index()} has no device in the mesh "
            f"{dict(mesh.shape)}; size the mesh axes to use every device, or set "
            "one of them to -1."
        )
    size = len(held_shards)
    first = held_shards[0]
    if (
        held_shards != list(range(first, first + size))
        or first % size
        or parallel % size
    ):
        raise ValueError(
            f"Process {jax.process_index()} has data-parallel shards {held_shards} of "
            f"{parallel}, which are not one block in order, so it cannot load "
            "its rows of a batch as one slice. Build the mesh from jax.devices() "
            "in their default order (mesh.make_mesh does)."
        )
    return BatchShard(index=first // size, count=parallel // size)


def check_batch_sizes(config, shard: BatchShard) -> None:
    """Check that the batch sizes of `config.data` split into `shard.count`.

    Raises:
      ConfigError: data.global_batch_size or data.eval_batch_size is not a
        multiple of shard.count.
    """
    for name in ("global_batch_size", "eval_batch_size"):
        size = config.data[name]
        if size % shard.count:
            raise ConfigError(
                f"data.{name}={size} is not divisible by the {shard.count} "
                "processes that each load a share of every batch; use a multiple "
                f"of {shard.count}."
            )


def any_process(flag: bool) -> bool:
    """Return True on every process when `flag` is True on any process.

    A collective: every process must call it at the same point.
    """
    if jax.process_count() == 1:
        return flag
    flags = multihost_utils.process_allgather(np.int32(flag))
    return bool(np.any(flags))


def run_on_first_process(function: Callable[[], T], description: str) -> T | None:
    """Call `function` on process 0 and wait for it on every process.

    Returns its result on process 0 and None on the others. With one process
    this is `function()`. Process 0 reraises an exception of `function`; the
    others then raise FirstProcessError, so no process waits forever.

    Raises:
      FirstProcessError: on processes other than 0, when `function` failed
        on process 0.
    """
    if jax.process_count() == 1:
        return function()
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = function()
        except Exception as caught:  # noqa: BLE001  (reraised after the broadcast)
            error = caught
    succeeded = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is not None:
        raise error
    if not int(succeeded):
        raise FirstProcessError(
            f"Process 0 failed to {description}; its log names the error."
        )
    return result


def run_first_process_first(function: Callable[[], T], description: str) -> T:
    """Call `function` on process 0, then, once it succeeded, on the others.

    For work that may write shared files the first time, such as preparing
    a TFDS dataset: the other processes find the files done.
    """
    result = run_on_first_process(function, description)
    if jax.process_index() != 0:
        result = function()
    return result
