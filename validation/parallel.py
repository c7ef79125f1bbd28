"""Running a check's replicates in this process, on a local Dask cluster, or on any Dask scheduler.

A check cuts its replicates into tasks (a few replicates each). Every number a task computes comes
from the run's seed and the replicate's index (validation/swap.replicate_seeds): the data were drawn
before the tasks, in replicate order, and each fit's seed is its replicate's. Results are put back in
task order, so the same seed gives the same table in this process, on 1 or 2 local workers, or on a
remote cluster. Each worker builds and compiles the model once (validation/swap.cached_refit; the fused
functions themselves come from the machine's disk cache) and refits it for every replicate it runs.
"""

from __future__ import annotations

from contextlib import contextmanager

CONNECT_TIMEOUT_S = 20.0


class ClusterError(RuntimeError):
    """The Dask scheduler cannot be reached (or its address is not one)."""


def local_cluster(workers: int):
    """A Dask LocalCluster of `workers` single-threaded processes.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes the C allocator hand back
    every freed block above 64 kB and slows work that allocates and frees many such temporaries (the
    conversion of each fit's draws); the workers here keep the allocator's default."""
    import dask
    from dask.distributed import LocalCluster

    env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items() if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40)


def connect(scheduler: str, timeout: float = CONNECT_TIMEOUT_S):
    """A Client of the scheduler at `scheduler`, or ClusterError saying why not."""
    from dask.distributed import Client

    try:
        return Client(scheduler, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at '{scheduler}': {exc}. Start one (`dask scheduler`, then "
                           "`dask worker ADDRESS` on each machine) and give its address, e.g. tcp://10.0.0.5:8786, or leave "
                           "--scheduler out to run here (--workers N for a local cluster)") from None


@contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None, client=None, timeout: float = CONNECT_TIMEOUT_S):
    """The Dask client to run tasks on: `client` as given, a Client of `scheduler`, a LocalCluster of `workers`
    single-threaded processes, or None (this process) when workers <= 1 and neither is given."""
    if client is not None or (scheduler is None and workers <= 1):
        yield client
        return
    cluster = None
    own = connect(scheduler, timeout) if scheduler is not None else None
    if own is None:
        from dask.distributed import Client

        cluster = local_cluster(workers)
        own = Client(cluster)
    try:
        yield own
    finally:
        own.close()
        if cluster is not None:
            cluster.close()


def describe(client) -> str:
    """Where tasks run, for the logs and the results' summaries."""
    if client is None:
        return "this process"
    n = len(client.scheduler_info().get("workers", {}))
    if getattr(client, "cluster", None) is not None and type(client.cluster).__name__ == "LocalCluster":
        return f"a Dask LocalCluster of {n} worker{'s' if n != 1 else ''}"
    return f"the Dask cluster at {client.scheduler.address}, {n} worker{'s' if n != 1 else ''}"


def run_tasks(fn, shared, tasks: list, client=None, on_result=None) -> list:
    """[fn(shared, task) for task in tasks], in this process (client None) or on the Dask client; on_result(i,
    result) is called as each task finishes (in completion order on a cluster). Results come back in task order."""
    if client is None:
        out = []
        for i, task in enumerate(tasks):
            out.append(fn(shared, task))
            if on_result:
                on_result(i, out[-1])
        return out
    from dask.distributed import as_completed

    shared_f = client.scatter(shared, broadcast=True, hash=False)
    futures = [client.submit(fn, shared_f, task, pure=False) for task in tasks]
    position = {f.key: i for i, f in enumerate(futures)}
    results = [None] * len(tasks)
    for fut in as_completed(futures):
        i = position[fut.key]
        results[i] = fut.result()
        if on_result:
            on_result(i, results[i])
    return results
