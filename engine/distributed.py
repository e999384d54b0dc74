"""Data-parallel initialisation (msrun workers, Ascend rank tables); a no-op for single-process runs.

``scripts/run_distributed.sh N CONFIG`` starts N copies of ``train.py --distribute`` through
``msrun``. Each joins the collective group here (``mindspore.communication.init`` picks HCCL on
Ascend, NCCL on GPU, MindSpore's own TCP collectives on CPU), reads its own shard of every domain,
and all-reduces (mean) its gradients inside the jitted step (``engine.trainer.make_step``).
``data.batch_size`` is per card and per domain: the global batch is batch_size x cards.
"""
import os

import numpy as np

# environment a launcher sets for each process: msrun, an Ascend rank table, OpenMPI (GPU)
LAUNCHER_ENV = ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE")
LAUNCH_HINT = "start it with scripts/run_distributed.sh NUM_CARDS CONFIG (msrun)"


class DistributedError(RuntimeError):
    """A one-line problem with the multi-process launch."""


def init_distributed(enabled):
    """Returns ``(rank, group_size)``; with ``enabled`` joins the collective group the launcher set up."""
    workers = os.environ.get("MS_WORKER_NUM", "")
    if not enabled:
        if os.environ.get("MS_ROLE") == "MS_WORKER" and workers.isdigit() and int(workers) > 1:
            raise DistributedError(f"started by msrun with {workers} workers but without --distribute: each "
                                   "would train alone and write the same run dir; add --distribute")
        return 0, 1
    if not any(os.environ.get(key) for key in LAUNCHER_ENV):
        raise DistributedError(f"--distribute needs a launcher ({' / '.join(LAUNCHER_ENV)} unset); {LAUNCH_HINT}")
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except Exception as err:  # MindSpore raises RuntimeError/ValueError with multi-line C++ traces
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"cannot join the collective group ({first}); {LAUNCH_HINT}") from None
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    return rank, size


def ranks_agree(values, group_size):
    """True when every rank passed the same small integers (one AllGather); True on one process.

    Used before training so that ranks that see different run directories (multi-node without
    shared storage) stop together with an error instead of hanging in the first all-reduce.
    (AllGather, not a MAX/MIN all-reduce: CPU collectives only sum; float32 is exact below 2**24.)
    """
    if group_size <= 1:
        return True
    from mindspore import Tensor, ops

    rows = ops.AllGather()(Tensor(np.asarray(values, np.float32))).asnumpy().reshape(group_size, -1)
    return bool((rows == rows[0]).all())
