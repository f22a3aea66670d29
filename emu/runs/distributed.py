"""Fuzz campaigns on a Dask distributed cluster (the optional `dask` extra).

`Campaign(..., scheduler="tcp://HOST:PORT")` (or `lpemu fuzz --scheduler`)
sends the campaign's runs in batches to a Dask cluster instead of the local
process pool. The compiled program is scattered once to every worker
(`client.scatter(..., broadcast=True)`) and each batch task receives its
future, so it travels once per worker, not once per run or batch.

The guarantees are the local ones: every finished batch is written to
runs.jsonl as it completes (`distributed.as_completed`); Dask re-runs the
tasks of a worker that is lost; a batch Dask gives up on (KilledWorker:
it killed workers again and again) is re-run one seed at a time, and a seed
that kills its worker again is recorded as a `crash`. Scattered data is
not recomputed: when the workers that held the program are all lost (a
worker that joined after the scatter fetches it from a peer, which may
die), Dask cancels the batches that need it; the program is scattered
again and those batches are submitted again (at most RESCATTERS times). `--resume` is
file-based, so a campaign may be started locally and finished on a cluster.

Dask is imported here only, and only when used.
"""
from __future__ import annotations

from emu.errors import UserError

INSTALL_HINT = "pip install 'livepatch-emu[dask]'"
RETRIES = 2                        # re-runs of a batch whose task raised (on top of Dask's lost-worker re-runs)
CONNECT_TIMEOUT = "10s"
RESCATTERS = 5                     # times the program may be scattered again after the cluster lost it


def _import():
    try:
        import distributed
    except ImportError:
        raise UserError(f"--scheduler needs Dask distributed, which is not installed: {INSTALL_HINT}") from None
    return distributed


def connect(address: str):
    """A Client of the scheduler at address (tcp://HOST:PORT)."""
    if not address.strip():            # Client("") would start a local cluster of its own
        raise UserError(f"--scheduler {address!r}: no address; give the scheduler's, tcp://HOST:PORT")
    distributed = _import()
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--scheduler {address}: cannot connect ({exc})") from None


def workers(client) -> int:
    """Threads (task slots) over the cluster's workers, at least 1."""
    return max(1, sum(client.nthreads().values()))


def run(camp, client, todo, known: dict, progress) -> None:
    """Run the runs todo (Plan.runs) of Campaign camp on client, recording
    each batch as it finishes. known: Runner.known() of the parent."""
    distributed = _import()
    from emu.runs.campaign import batch_size, run_batch
    killed = getattr(distributed, "KilledWorker", None) or distributed.scheduler.KilledWorker
    size = batch_size(len(todo), workers(client), camp.batch)
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    if not batches:
        return
    cancelled = distributed.client.FutureCancelledError
    program = [client.scatter(camp.program, broadcast=True, hash=False)]
    rescatters = resubmits = 0
    strategy = camp.plan.strategy

    pending = {}
    ac = distributed.as_completed()

    def submit(batch) -> None:
        fut = client.submit(run_batch, program[0], known, strategy, batch, pure=False, retries=RETRIES)
        pending[fut.key] = (batch, fut)
        ac.add(fut)

    for b in batches:
        submit(b)
    try:
        for fut in ac:
            batch, _ = pending.pop(fut.key)
            try:
                recs = fut.result()
            except killed:
                if len(batch) == 1:       # this very seed kills its worker, again and again
                    camp.record_crash(*batch[0])
                    if progress:
                        progress(1)
                    continue
                for run_ in batch:        # find the seed that kills workers: one seed per task
                    submit([run_])
                continue
            except cancelled:
                # the cluster lost the program (scattered data is not
                # recomputed): scatter it again, once, and run each batch
                # it cancelled again
                resubmits += 1
                if resubmits > RESCATTERS * len(batches):
                    raise
                if program[0].status != "finished":
                    if rescatters == RESCATTERS:
                        raise
                    rescatters += 1
                    client.cancel([program[0]])
                    program[0] = client.scatter(camp.program, broadcast=True, hash=False)
                submit(batch)
                continue
            finally:
                fut.release()
            for rec in recs:
                camp.record(rec)
            if progress:
                progress(len(recs))
    finally:
        if pending:                       # interrupted: stop what is left on the cluster
            client.cancel([f for _, f in pending.values()])
        client.cancel([program[0]])
