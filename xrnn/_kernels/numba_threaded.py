"""Both directions of a bidirectional layer at once, each on its own core.

The two directions of a layer never read each other's states: each is a whole
recurrence of its own, forward and backward. Here each direction's time loop is one
compiled call that holds no GIL (the per-step product by NumPy's BLAS called from
compiled code, :mod:`.blas`, then the fused gate step of :mod:`.numba_layer`), and the
two run on two threads, the reverse one on a pool thread, with BLAS on one thread each.
The per-step products of the batched two-direction loop
(:class:`.numba_layer._FusedLayer`) ran on OpenBLAS's two threads with a barrier every
product; here no step waits for the other direction. The input projection (a chunk of
steps at a time) and the weight gradients are each direction's own NumPy products, made
on that direction's thread.

Two threads need BLAS on one thread each, a process-wide setting that NumPy's OpenBLAS
takes from the main thread only: called from any other thread (Dask's workers, a user's
threads) the two directions run one after the other there, each product on BLAS's
threads, as the fused steps' products do. Results agree to rounding either way, not
always to the last bit (BLAS's products may round differently on one thread).

Used for bidirectional layers above the whole-loop limits (:func:`.numba_layer.fits`)
without per-step hooks or ``proj_size``, when the process may use two cores or more
(:func:`usable_cores`) and NumPy's BLAS is callable (:data:`.blas.AVAILABLE`); the
LayerNorm cells' forward does the same (:mod:`.numba_layernorm`). Measured in
benchmarks/NOTES.md (issue 13, fifth pass).

While the two directions run, the calling thread is held on the core it runs on and the
pool thread on the others (:func:`_hold_apart`), and both are let go as soon as the caller's
direction ends. On the 2-core VM, after a quarter of a second idle, Linux woke the pool
thread on the caller's own core in two calls of three, and the two directions shared
that core for the whole layer (a GIL hand-off could move them together again): the RNN
forward (100,32,64,128,2,2) took 11.0 ms instead of 7.7 (NOTES.md, issue 13,
twenty-first pass). The split layer (:mod:`.numba_split`), whose halves wait for each
other at every step, holds its threads apart only until its pool thread starts: held
for the whole layer, beside a busy process its halves took 2.8 times as long.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import blas, packed
from .numba_layer import (_GRU, _LSTM, _Compiled, _elman_row_back, _elman_step, _gru_row_back,
                          _gru_step, _jit, _lstm_row_back, _lstm_step, one_blas_thread,
                          steps_inactive)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_POOL_NAME = "xrnn-direction"
_pool: ThreadPoolExecutor | None = None
_pool_thread: int = 0  # the pool thread's native id
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool thread does not exist there, and work handed
    to its pool would never run; the child makes a pool of its own when it needs one."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _core_getter():
    """The C library's ``sched_getcpu`` (the core the calling thread runs on), or None
    where it or per-thread affinity is missing (not Linux)."""
    try:
        getter = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError, TypeError):
        return None
    getter.restype, getter.argtypes = ctypes.c_int, []
    return getter if hasattr(os, "sched_setaffinity") else None


_this_core = _core_getter()


def _set_cores(thread: int, cores) -> bool:
    try:
        os.sched_setaffinity(thread, cores)
        return True
    except OSError:  # the thread is gone, or the cores are no longer the process's
        return False


def _hold_apart(pool_thread: int) -> set[int] | None:
    """Hold the calling thread on its core and ``pool_thread`` on the caller's other
    cores (module docstring); returns the caller's cores, to give both back, or None
    where nothing is held: the caller may use one core only, or per-thread affinity is
    not available."""
    if _this_core is None:
        return None
    cores, core = os.sched_getaffinity(0), _this_core()
    if len(cores) < 2 or core not in cores or not _set_cores(0, {core}):
        return None
    if not _set_cores(pool_thread, cores - {core}):
        _set_cores(0, cores)
        return None
    return cores


def _on_two_threads(task, parallel: bool = True, apart: bool = False,
                    until_started: bool = False):
    """``[task(0), task(1)]``, ``task(1)`` on a pool thread while the caller runs
    ``task(0)``; waits for both before returning or raising. Not ``parallel``: one after
    the other on the calling thread. ``apart``: the two threads held on different cores
    (:func:`_hold_apart`) until ``task(0)`` ends, or with ``until_started`` only until
    ``task(1)`` starts, on the pool thread: for tasks that take no GIL once started, so
    that neither thread sleeps and wakes again beside the other (the split layer's
    halves, :mod:`.numba_split`, which wait for each other at every step: held for the
    whole layer, beside a busy process they took 2.8 times as long)."""
    global _pool, _pool_thread
    if not parallel:
        return [task(0), task(1)]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_POOL_NAME)
            _pool_thread = _pool.submit(threading.get_native_id).result()
    threads = (threading.get_native_id(), _pool_thread)
    held = [_hold_apart(_pool_thread) if apart else None]
    lock = threading.Lock()

    def let_go() -> None:  # both threads their cores back, once, by whichever comes first
        with lock:
            cores, held[0] = held[0], None
        if cores is not None:
            for thread in threads:
                _set_cores(thread, cores)

    def second(t):
        let_go()
        return task(t)

    try:
        other = _pool.submit(second if until_started else task, 1)
    except BaseException:
        let_go()
        raise
    try:
        first = task(0)
    finally:
        let_go()
        result = other.result()
    return [first, result]


@contextlib.contextmanager
def cores_for_two_threads() -> Iterator[bool]:
    """BLAS on one thread (:func:`.numba_layer.one_blas_thread`: yields whether that
    took), and OpenBLAS's worker threads ended (:func:`.blas.stop_workers`) when no
    Python thread but the main one and the direction pool's can be calling BLAS: after
    a product on BLAS's threads its worker spins on a core for about 0.1 s, and a layer
    on two threads of ours right after it took up to 2.3x as long (NOTES.md, issue 13,
    seventh pass). Ended again after the count is restored, where threadpoolctl restored
    it: that starts a worker, which would spin for 0.1 s with nothing to do in the
    caller's next code. (Restored by :func:`.blas.one_thread`, nothing starts: OpenBLAS
    starts its workers when a product next runs on its threads, and the second end
    costs about a microsecond.)"""
    ours = all(thread is threading.main_thread() or thread.name.startswith(_POOL_NAME)
               for thread in threading.enumerate())
    ended = False
    try:
        with one_blas_thread() as single:
            if single and ours:
                blas.stop_workers()
                ended = True
            yield single
    finally:
        if ended:
            blas.stop_workers()


def each_direction(task):
    """``[task(0), task(1)]`` with BLAS on one thread: on two threads where that setting
    took (the main thread), else one after the other on the calling thread, where BLAS's
    own threads share the cores already."""
    with cores_for_two_threads() as single:
        return _on_two_threads(task, parallel=single, apart=True)


@_jit
def _direction_forward(code, gx, start, count, w_hh, panels, x_bias, hh_bias, h, c, a, tanh_c,
                       gh, z, inactive, tape):
    """Steps ``start`` to ``start + count`` of one direction (its buffers, step order):
    ``gx`` (chunk, B, G*H) their input projection; ``w_hh`` (G*H, P) and its ``panels``
    (:func:`.packed.panels_for`); ``h`` (T+1, B, P),
    ``c`` (T+1, B, H), taped ``a``, ``tanh_c``, ``gh`` (T or 1, B, ·; the LSTM's ``a``
    and ``tanh_c`` written only with ``tape``); ``z`` (B, G*H) scratch; ``inactive``
    (T, B). Unused buffers of a cell may be any 3-d array."""
    taped = a.shape[0]
    for s in range(start, start + count):
        k = s if taped > 1 else 0
        if code == _LSTM:
            packed.product(h[s], w_hh, True, panels, z)
            _lstm_step(z, gx[s - start], x_bias, c[s], c[s + 1], a[k], tanh_c[k], h[s + 1],
                       tape)
        elif code == _GRU:
            product = gh[k]
            packed.product(h[s], w_hh, True, panels, product)
            _gru_step(product, gx[s - start], x_bias, hh_bias, h[s], a[k], h[s + 1])
        else:
            packed.product(h[s], w_hh, True, panels, z)
            _elman_step(z, gx[s - start], x_bias, h[s + 1], code)
        for b in range(h.shape[1]):  # a padded step leaves the state as it was
            if inactive[s, b]:
                h[s + 1, b] = h[s, b]
                if code == _LSTM:
                    c[s + 1, b] = c[s, b]


@_jit
def _direction_backward(code, grad_steps, dh, dc, w_hh, panels, h, c, a, tanh_c, gh, dz_all,
                        dgh_all, back, inactive):
    """BPTT of one direction (step order): ``grad_steps`` (T, B, P) the outputs'
    gradients; ``dh`` (B, P) and ``dc`` (B, H) the final states', which become the
    initial states'; fills ``dz_all`` and ``dgh_all`` (T, B, G*H; the same array but for
    the GRU); ``w_hh`` (G*H, P) and its ``panels`` (:func:`.packed.panels_for`); ``back``
    (B, P) scratch."""
    zero = dh.dtype.type(0)
    batch, width = dh.shape
    for s in range(grad_steps.shape[0] - 1, -1, -1):
        dz, dgh = dz_all[s], dgh_all[s]
        for b in range(batch):
            row, grad = dh[b], grad_steps[s, b]
            for p in range(width):
                row[p] += grad[p]
            if inactive[s, b]:  # a padded step passes the gradient through
                dz[b] = zero
                dgh[b] = zero
            elif code == _LSTM:
                _lstm_row_back(a[s, b], tanh_c[s, b], c[s, b], row, dc[b], dz[b])
            elif code == _GRU:  # row becomes dh z, the path that does not go through W_hh
                _gru_row_back(a[s, b], gh[s, b], h[s, b], row, dz[b], dgh[b], row)
            else:
                _elman_row_back(h[s + 1, b], row, dz[b], code)
        packed.product(dgh, w_hh, False, panels, back)
        for b in range(batch):
            if inactive[s, b]:
                continue
            row, product = dh[b], back[b]
            if code == _GRU:
                for p in range(width):
                    row[p] += product[p]
            else:
                row[:] = product


class _ThreadedLayer(_Compiled):
    """A bidirectional layer whose directions run on two threads (module docstring)."""

    def __init__(self, x, states, weights, cell, keep, active, position=(0, 1)):
        super().__init__(x, states, weights, cell, keep, active, position=position)
        self.steps_inactive = steps_inactive(self)
        unused = np.empty((self.D, 1, 1, 1), dtype=self.dtype)  # a cell's unused buffers
        self.c_or_unused = unused if self.c is None else self.c
        self.tanh_c_or_unused = unused if self.tanh_c is None else self.tanh_c
        self.gh_or_unused = unused if self.gh is None else self.gh
        self.active = active
        self.stacked = [False] * self.D

    def _stack_w_hh(self, directions) -> None:
        """(each direction's on its own thread, when a loop first reads it: made on the
        calling thread before the two started, the copies took 0.9 ms of a 28.6 ms
        (100,1,256,512,2,2) LSTM forward, and the layer is 2-3% faster without them there:
        NOTES.md, issue 13, eleventh and thirteenth passes)"""

    def _w_hh_read(self, d: int):
        """Direction ``d``'s ``W_hh`` for a loop that reads it at every step: the stack's
        aligned copy, made on first use. (A forward on panels reads only the panels,
        packed from the parameter itself: the 4 MiB copy took 0.6-0.8 ms of a 22 ms
        (100,1,256,512,2,2) LSTM forward: NOTES.md, issue 13, eighteenth pass.)"""
        if not self.stacked[d]:
            super()._stack_w_hh([d])
            self.stacked[d] = True
        return self.w_hh_stack[d]

    def _reverse_input(self) -> None:
        """(on the reverse direction's own thread, at the start of its forward)"""

    def forward(self):
        self.out = self._output_array((self.steps, self.batch, 2 * self.P))
        each_direction(self._forward_direction)

    def output(self, active):
        """(each direction wrote its half on its own thread)"""
        return self.out

    def _forward_direction(self, d: int) -> None:
        """Direction ``d``'s reversed input, its loop, then its half of the output, all on
        its own thread (made one after the other on the calling thread, the copies took
        60 ms a layer of a 1.7 s (200,64,256,512,2,2) LSTM forward: NOTES.md, issue 13,
        sixth pass)."""
        if d == 1:
            super()._reverse_input()
        self._loop_direction(d)
        half = self.out[..., d * self.P:(d + 1) * self.P]
        half[...] = self.h[0, 1:] if d == 0 else self.h[1, :0:-1]
        if self.active is not None:
            np.copyto(half, 0.0, where=~self.active)

    def _loop_direction(self, d: int) -> None:
        chunk = self.gx.shape[1]
        gx, x = self.gx[d], self.x_steps[d]
        panels = packed.panels_for(self._w_hh[d], True, self.batch, "w_hh_panels")
        w_hh = self._w_hh[d] if panels.shape[0] else self._w_hh_read(d)
        for start in range(0, self.steps, chunk):
            count = min(chunk, self.steps - start)
            rows = count * self.batch
            np.matmul(x[start:start + count].reshape(rows, -1), self.w_ih_t[d],
                      out=gx[:count].reshape(rows, -1))
            _direction_forward(self.code, gx, start, count, w_hh, panels,
                               self.x_bias[d], self.hh_bias[d], self.h[d], self.c_or_unused[d],
                               self.a[d], self.tanh_c_or_unused[d], self.gh_or_unused[d],
                               self.z[d], self.steps_inactive[d], self.keep)

    def backward(self, grad_output, grad_finals):
        """BPTT; returns ``(grad_x, grad_states, grad_weights)`` like the generic driver."""
        self.grad_steps, self.dh, dc = self._backward_start(grad_output, grad_finals)
        self.dc = self.dh if dc is None else dc  # (any (D, B, ·) array for the other cells)
        directions, steps, batch = self.D, self.steps, self.batch
        self.dz_all = self._buffer((directions, steps, batch, self.gx.shape[-1]))
        self.dgh_all = self._buffer(self.dz_all.shape) if self.kind == "gru" else self.dz_all
        self.back = np.empty((directions, batch, self.P), dtype=self.dtype)
        return self._combine(each_direction(self._backward_direction), self.dh, dc)

    def _backward_direction(self, d: int):
        w_hh = self._w_hh_read(d)
        panels = packed.panels_for(w_hh, False, self.batch, "w_hh_panels")
        _direction_backward(self.code, self.grad_steps[d], self.dh[d], self.dc[d], w_hh, panels,
                            self.h[d], self.c_or_unused[d], self.a[d], self.tanh_c_or_unused[d],
                            self.gh_or_unused[d], self.dz_all[d], self.dgh_all[d], self.back[d],
                            self.steps_inactive[d])
        return self._direction_gradients(d, self.dz_all, self.dgh_all, None)


def threads(weights, hooks) -> bool:
    """Whether a layer above the whole-loop limits runs a direction per thread:
    bidirectional, no per-step hooks or projection, two cores or more."""
    return (len(weights) == 2 and hooks is None and weights[0].w_hr is None
            and blas.AVAILABLE and usable_cores() >= 2)
