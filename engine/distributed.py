"""Data-parallel initialisation (msrun workers); a no-op for single-process runs."""


def init_distributed(enabled):
    """Returns ``(rank, group_size)``; with ``enabled`` joins the collective group msrun set up."""
    if not enabled:
        return 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()
