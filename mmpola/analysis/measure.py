"""Timing and peak-memory measurement for the benchmark tool.

Peak memory is the peak of live tensor memory during one call, above what
was allocated when the call started (the inputs and the model are not
counted; what the call allocates and frees, activations, gradients and
temporaries, is):

* CUDA: ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()``, minus ``memory_allocated()`` at the start;
* CPU: the same quantity from the PyTorch profiler's allocator events
  (``profile_memory=True``): every tensor allocation and free of the call,
  in time order; the peak of their running sum. It counts exactly the bytes
  PyTorch's CPU allocator hands out, like CUDA's counter, and is not
  disturbed by what the C library keeps cached or by other threads. The
  profiled call is a separate run from the timed ones (the profiler slows
  it down).

``rss_peak_delta`` is the process-level alternative (Linux: high-water mark
of the resident set, reset through ``/proc/self/clear_refs``): it includes
allocator overhead and fragmentation, but memory the C library kept from
earlier calls is reused without raising it, so it under-reports; it is kept
as a cross-check.
"""
import contextlib
import os
import time
from typing import Callable, Optional

import torch


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_call(fn: Callable, device='cpu') -> float:
    """Wall-clock seconds of ``fn()`` (CUDA: synchronised before and
    after)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines)."""
    import sys
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _start(event) -> int:
    """A profiler event's start in ns (torch < 2.2 has only start_us)."""
    if hasattr(event, 'start_ns'):
        return event.start_ns()
    return event.start_us() * 1000


def _cpu_peak_bytes(fn: Callable) -> int:
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr():
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                       record_shapes=False)
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = [(_start(e), e.nbytes())
              for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and e.device_type().name == 'CPU']
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable, device='cpu') -> int:
    """Peak bytes of live tensors allocated by ``fn()`` (module docstring).
    """
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_bytes(fn)


def _read_status(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_peak_delta(fn: Callable) -> Optional[int]:
    """Rise of the process's peak resident set during ``fn()`` in bytes,
    or None where ``/proc/self/clear_refs`` is not available."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _read_status('VmRSS')
    fn()
    peak = _read_status('VmHWM')
    if base is None or peak is None:
        return None
    return max(peak - base, 0)


