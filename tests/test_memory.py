"""pipeline.memory: the heap figures the soak reports and the trim long runs do."""
import ctypes.util

import numpy as np
import pytest

from pipeline.memory import heap_in_use_mib, release_free_heap

GLIBC = ctypes.util.find_library("c") == "libc.so.6"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallinfo2 are glibc's; this C library is not glibc")
def test_heap_in_use_follows_an_allocation_and_trim_runs():
    before = heap_in_use_mib()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    during = heap_in_use_mib()
    del block
    assert release_free_heap() is True
    after = heap_in_use_mib()
    assert during - before == pytest.approx(64, abs=4) and after - before < 4
