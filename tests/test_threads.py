"""The C++ kernels' thread pool: fork safety, thread-creation failure, and the thread count.

Scenarios that can hang (fork, thread-creation failure) run in a subprocess of their own, in
a new session, with a timeout: a hang kills the whole process group and fails the test instead
of blocking the suite. The pool's worker threads are named ``fastmask-pool``, so a scenario
can see (``/proc/self/task/*/comm``) whether a process really has them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import fastmask
from fastmask import _backend

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="fork, /proc and ulimit scenarios are Linux-only"),
    pytest.mark.skipif(_backend.cpp_module() is None, reason="the C++ extension is not built"),
]

REPO = pathlib.Path(fastmask.__file__).resolve().parent.parent
TIMEOUT = 60

# Shared by every scenario: a batch, a masking call on a backend, and the pool's threads.
PRELUDE = '''
import os, sys
import torch
import fastmask
from fastmask import _backend

def batch(seed, rows=4096, length=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 1000, (rows, length), generator=g)

def mask(ids, backend="cpp", seed=0):
    return fastmask.mask_tokens(ids, mask_token_id=4, vocab_size=1000, seed=seed, backend=backend)

def torch_single_threaded():
    """torch's own OpenMP pool (GNU libgomp) hangs in a forked child once the parent has used
    it: fork scenarios keep torch on one thread, as DataLoader workers are; the fastmask pool
    is sized by FASTMASK_NUM_THREADS there."""
    torch.set_num_threads(1)

def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))

def pool_threads():
    """Thread ids of this process's fastmask pool workers."""
    tids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("fastmask"):
                    tids.add(int(tid))
        except OSError:
            pass
    return tids
'''


def _run(
    code: str, *, env: dict | None = None, shell_prefix: str | None = None, timeout: int = TIMEOUT
) -> subprocess.CompletedProcess:
    """Run PRELUDE + ``code`` in a fresh Python; fail (never block) if it does not finish.

    ``shell_prefix`` runs the interpreter through bash after that prefix, which ends in a command
    that runs its arguments (``ulimit -v N && exec``, ``exec taskset -c 0``).
    The process gets a session of its own so that a timeout kills forked grandchildren too
    (``subprocess.run(timeout=...)`` would wait forever for a hung grandchild's pipes).
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environment.get("PYTHONPATH")) if p)
    environment.pop("FASTMASK_NUM_THREADS", None)
    environment.pop("FASTMASK_BACKEND", None)
    environment.update(env or {})
    script = PRELUDE + textwrap.dedent(code)
    if shell_prefix is None:
        argv = [sys.executable, "-c", script]
    else:
        argv = ["bash", "-c", f'{shell_prefix} "$0" -c "$1"', sys.executable, script]
    proc = subprocess.Popen(
        argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the scenario hung (killed after {timeout} s)\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"exit status {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result.stdout


# ----------------------------------------------------------------------------- fork safety
def test_forked_child_uses_the_kernels_and_exits():
    out = _check(
        _run(
            """
        torch_single_threaded()
        ids = batch(0)
        expected = mask(ids, "reference")
        assert same(mask(ids), expected)          # the parent builds its pool
        logits = torch.randn(2048, 300, generator=torch.Generator().manual_seed(1))
        labels = torch.randint(0, 300, (2048,), generator=torch.Generator().manual_seed(2))
        loss_ref = fastmask.masked_cross_entropy(logits, labels, backend="reference")
        pid = os.fork()
        if pid == 0:
            ok = same(mask(ids), expected) and same(mask(ids), expected)
            loss = fastmask.masked_cross_entropy(logits, labels, backend="cpp")
            ok = ok and torch.allclose(loss, loss_ref, rtol=1e-5, atol=1e-6)
            ok = ok and len(pool_threads()) == 3  # a fresh pool: FASTMASK_NUM_THREADS=4 -> 3 workers
            sys.exit(0 if ok else 3)              # a normal exit: finalizers and static destructors run
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        assert same(mask(ids), expected)          # the parent's pool still works
        print("parent ok")
    """,
            env={"FASTMASK_NUM_THREADS": "4"},
        )
    )
    assert "child 0" in out and "parent ok" in out, out


def test_fork_while_another_thread_runs_kernels():
    """Forks taken while a second thread is (most likely) inside the pool: each child's kernels
    still run, on a pool of their own."""
    out = _check(
        _run(
            """
        torch_single_threaded()
        import threading
        ids = batch(0, rows=16384)  # long enough kernels that a fork usually lands inside one
        expected = mask(ids, "reference")
        stop = threading.Event()
        errors = []

        def busy():
            while not stop.is_set():
                if not same(mask(ids), expected):
                    errors.append("mismatch in the busy thread")

        worker = threading.Thread(target=busy)
        worker.start()
        codes = []
        try:
            for _ in range(8):
                pid = os.fork()
                if pid == 0:  # the kernels' locks must be free here, and a fresh pool start
                    ok = same(mask(ids), expected) and len(pool_threads()) == 2
                    os._exit(0 if ok else 3)  # a normal exit is the previous test's subject
                codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        finally:
            stop.set()
            worker.join()
        print("codes", codes, "errors", errors)
        assert codes == [0] * 8 and not errors
    """,
            env={"FASTMASK_NUM_THREADS": "3"},
        )
    )
    assert "codes [0, 0, 0, 0, 0, 0, 0, 0]" in out, out


def test_multiprocessing_fork_workers_after_the_parent_used_the_kernels():
    out = _check(
        _run(
            """
        torch_single_threaded()
        import multiprocessing

        def work(seed):
            result = mask(batch(seed))
            return result, len(pool_threads())

        if __name__ == "__main__":
            assert same(mask(batch(99)), mask(batch(99), "reference"))  # the parent builds its pool
            ctx = multiprocessing.get_context("fork")
            pool = ctx.Pool(2)
            try:
                results = pool.map(work, range(4))
            finally:
                pool.close()
                pool.join()
            for seed, (result, threads) in enumerate(results):
                assert same(result, mask(batch(seed), "reference")), seed
                assert threads == 2, f"worker for seed {seed} has {threads} pool threads, expected 2"
            print("ok")
    """,
            env={"FASTMASK_NUM_THREADS": "3"},
        )
    )
    assert "ok" in out


def test_datasets_map_with_num_proc_after_the_parent_used_the_kernels():
    pytest.importorskip("datasets")
    out = _check(
        _run(
            """
        torch_single_threaded()
        import datasets

        def fn(example):
            ids = torch.tensor(example["input_ids"])
            masked, labels = mask(ids)
            return {"masked": masked.tolist(), "labels": labels.tolist(), "pool": [len(pool_threads())] * len(ids)}

        if __name__ == "__main__":
            datasets.disable_progress_bars()
            ids = batch(3, rows=1024)
            # row keys count from 0 in every call: map's batches of 512 rows mask like this
            parts = [mask(ids[i : i + 512], "reference") for i in (0, 512)]
            expected = tuple(torch.cat(p) for p in zip(*parts))
            assert same(mask(ids[:512]), parts[0])  # the parent builds its pool
            ds = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
            out = ds.map(fn, batched=True, batch_size=512, num_proc=2)
            assert same((torch.tensor(out["masked"]), torch.tensor(out["labels"])), expected)
            assert set(out["pool"]) == {2}, set(out["pool"])
            print("ok")
    """,
            env={"FASTMASK_NUM_THREADS": "3"},
        )
    )
    assert "ok" in out


# ----------------------------------------------------------------------------- thread creation fails
def test_thread_creation_failure_neither_hangs_nor_gives_wrong_results():
    """Under a 6 GB address-space limit 100000 thread stacks cannot be mapped: the kernels run
    serially (the failed pool is not retried on every call, and the threads it did start are
    given back, so torch can still start its own), or raise naming FASTMASK_NUM_THREADS."""
    result = _run(
        """
        from fastmask import info
        ids = batch(0)
        try:
            first = mask(ids)
        except RuntimeError as exc:
            print("raised", exc)
            sys.exit(0)
        state = fastmask._C._pool_state()
        second = mask(ids)
        expected = mask(ids, "reference")  # torch's own threads still start
        assert same(first, expected) and same(second, expected)
        assert state["creation_failed"] and state["workers"] == 0, state
        assert fastmask._C._pool_state()["builds"] == state["builds"], "the pool was rebuilt on the second call"
        assert "serially" in info.report()
        print("ok", state)
    """,
        env={"FASTMASK_NUM_THREADS": "100000"},
        shell_prefix="ulimit -v 6000000 && exec",
    )
    out = _check(result)
    if out.startswith("raised"):
        assert "FASTMASK_NUM_THREADS" in out, out
    else:
        assert out.startswith("ok"), out


# ----------------------------------------------------------------------------- the thread count
def test_dataloader_worker_uses_one_thread():
    out = _check(
        _run("""
        def collate(rows):
            mask(torch.stack(rows))
            return torch.tensor(fastmask._C.num_threads())

        if __name__ == "__main__":
            mask(batch(0))  # the parent has synced its own count first
            data = list(batch(1, rows=64))
            loader = torch.utils.data.DataLoader(data, batch_size=32, num_workers=1, collate_fn=collate,
                                                 multiprocessing_context="fork")
            print("worker threads", sorted({int(t) for t in loader}))
    """)
    )
    assert "worker threads [1]" in out, out


@pytest.mark.parametrize("op", ["mask_tokens", "masked_cross_entropy"])
def test_torch_set_num_threads_one_gives_one_thread(op):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if op == "mask_tokens":
            fastmask.mask_tokens(torch.randint(5, 1000, (512, 64)), mask_token_id=4, vocab_size=1000, backend="cpp")
        else:
            fastmask.masked_cross_entropy(torch.randn(64, 100), torch.randint(0, 100, (64,)), backend="cpp")
        assert fastmask._C.num_threads() == 1
        assert _backend.cpp_thread_count()[0] == 1
    finally:
        torch.set_num_threads(before)
    # the next call follows torch's count again
    fastmask.mask_tokens(torch.randint(5, 1000, (8, 8)), mask_token_id=4, vocab_size=1000, backend="cpp")
    assert fastmask._C.num_threads() == min(before, len(os.sched_getaffinity(0)))


def test_fastmask_num_threads_overrides_torch():
    out = _check(
        _run(
            """
        from fastmask import info
        torch.set_num_threads(1)
        mask(batch(0))
        print("threads", fastmask._C.num_threads(), _backend.cpp_thread_count())
        print(info.report())
    """,
            env={"FASTMASK_NUM_THREADS": "3"},
        )
    )
    assert "threads 3 (3," in out, out
    line = next(l for l in out.splitlines() if l.startswith("C++ extension"))
    assert line.startswith("C++ extension: built, 3 threads (") and "FASTMASK_NUM_THREADS" in line, line


def test_cpu_affinity_bounds_the_count():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no os.sched_getaffinity")
    first = min(os.sched_getaffinity(0))
    code = """
        from fastmask import info
        torch.set_num_threads(2)                 # more than the one CPU this process may use
        mask(batch(0))
        print("threads", fastmask._C.num_threads())
        print(info.report())
        fastmask._C.set_num_threads(0)           # the C++ default (direct use of the module)
        print("default", fastmask._C.num_threads())
    """
    if shutil.which("taskset"):
        result = _run(code, shell_prefix=f"exec taskset -c {first}")
    else:
        result = _run(f"os.sched_setaffinity(0, {{{first}}})\n" + textwrap.dedent(code))
    out = _check(result)
    assert "threads 1\n" in out and "default 1\n" in out, out
    line = next(l for l in out.splitlines() if l.startswith("C++ extension"))
    assert line.startswith("C++ extension: built, 1 thread (") and "affinity" in line, line
