"""Child process of test_pdiff.py's close-while-sampling tests: ``python close_race.py BUNDLE``.

A worker thread samples (DDPM: long enough to be inside the library) from a Sampler while the
main thread closes that Sampler under it, three ways: ``close()``, the exit of a ``with``
block, and dropping the last reference (garbage collection) while the call is in flight. The
in-flight call must return exactly the reference samples, calls after the close must raise
:class:`pdiff.NullPointerError`, and each handle must be freed once (a double free aborts this
process under MALLOC_CHECK_=3). A bug here may well crash the interpreter, which is why it runs
in its own process. Prints one "ok ..." line per case and exits 0; anything else is a failure.
"""
import gc
import sys
import threading
import time

import numpy as np

import pdiff

BUNDLE = sys.argv[1]
SEED = 5
# DDPM runs every one of the schedule's T steps: with n = 32 the call takes a few tenths of a
# second on a small bundle; doubled until the close really lands while the call is in flight.
FIRST_N, MAX_N = 32, 4096
HEAD_START = 0.05  # seconds the worker gets to enter the library before the close


def open_sampler():
    return pdiff.Sampler(BUNDLE, provider="cpu", intra_threads=1)


def reference(n):
    with open_sampler() as s:
        return s.sample(n, seed=SEED, sampler="ddpm")


def start_worker(sampler, n):
    """Sample n on a thread; returns (thread, result dict: 'value' or 'error')."""
    result = {}

    def work():
        try:
            result["value"] = sampler.sample(n, seed=SEED, sampler="ddpm")
        except BaseException as e:  # noqa: BLE001: reported to the main thread
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    time.sleep(HEAD_START)
    return t, result


def expect_closed(s, how):
    for call in (lambda: s.sample(1, seed=1, steps=2), lambda: s.param_count, lambda: s.layout):
        try:
            call()
        except pdiff.NullPointerError as e:
            assert "closed" in e.message, f"{how}: unclear error after close: {e.message!r}"
        else:
            raise AssertionError(f"{how}: a call after the close did not raise")
    assert s.closed, how
    assert repr(s) == "Sampler(closed)", how


def check_result(t, result, expect, how):
    t.join()
    assert "error" not in result, f"{how}: the in-flight call failed: {result.get('error')!r}"
    got = result["value"]
    assert got.shape == expect.shape and np.array_equal(got, expect), \
        f"{how}: the in-flight call returned other samples than the reference"


def close_during_call(how, close):
    """One case: `close(sampler, worker)` ends the sampler while the worker samples. Retried
    with a larger n when the worker had already finished (then nothing was tested)."""
    n = FIRST_N
    while True:
        expect = reference(n)
        s = open_sampler()
        t, result = start_worker(s, n)
        s = close(s)  # returns the sampler when the case keeps a reference to it, else None
        in_flight = t.is_alive()
        if s is not None:
            expect_closed(s, how)
        check_result(t, result, expect, how)
        del s
        gc.collect()  # a handle freed by its last call must not be freed again here
        if in_flight:
            print(f"ok {how}: n = {n}, ended during the call, which returned the reference samples")
            return
        if n >= MAX_N:
            raise AssertionError(f"{how}: sampling n = {n} finished within {HEAD_START}s: nothing was tested")
        n *= 2


def by_close(s):
    s.close()
    s.close()  # idempotent, also while a call is in flight
    return s


def by_with(s):
    with s:
        pass  # the block ends while the worker samples
    return s


def by_gc(s):
    # The worker's call keeps the Sampler alive; dropping ours must not free it under the call.
    # The handle is then freed by the garbage collector once the worker is done with it.
    del s
    gc.collect()
    return None


close_during_call("close()", by_close)
close_during_call("with exit", by_with)
close_during_call("garbage collection", by_gc)

# close() from inside a call on the same handle (best_of_n's score_fn runs on the calling thread,
# inside pdiff_sampler_best_of_n): it must not wait for that call, which would deadlock (why
# close() defers the free instead of waiting); the call completes with the same result as
# without the close, and the handle is freed once, as the call returns.
with open_sampler() as ref:
    want_best, want_index, want_score = ref.best_of_n(6, lambda p: -float(p @ p), seed=SEED, steps=10)
s = open_sampler()
scored = []


def score_and_close(p):
    scored.append(len(scored))
    if len(scored) == 2:
        s.close()
    return -float(p @ p)


best, index, score = s.best_of_n(6, score_and_close, seed=SEED, steps=10)
assert len(scored) == 6, f"{len(scored)} candidates scored"
assert (index, score) == (want_index, want_score) and np.array_equal(best, want_best), "close from a callback changed the result"
expect_closed(s, "close() from a callback")
del s
gc.collect()
print("ok close() from a callback inside a call on the same sampler: same best, later calls raise")

# Many closes racing each other and new calls: each handle freed exactly once.
for i in range(20):
    s = open_sampler()
    errors = []

    def hammer():
        for _ in range(5):
            try:
                s.sample(2, seed=i, steps=3)
            except pdiff.NullPointerError:
                pass
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(3)] + [threading.Thread(target=s.close) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert s.closed
    del s
    gc.collect()
print("ok concurrent close() and calls: 20 rounds")
