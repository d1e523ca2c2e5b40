"""PyTorch's CUDA caching allocator, replayed on a sequence of allocations and frees.

``torch.cuda.max_memory_reserved`` counts the segments the allocator took from cudaMalloc, not
the tensors alive: a freed block stays cached, and a request that no cached block can hold
takes a new segment even when the cache holds enough bytes in pieces (fragmentation). This
module plays the allocator's rules on one stream, as c10/cuda/CUDACachingAllocator.cpp has them
in PyTorch 2.1-2.x with the default configuration (no ``expandable_segments``, no
``max_split_size_mb``, no ``garbage_collection_threshold``, no ``roundup_power2_divisions``):

- ``round_size``: a request is rounded up to a multiple of 512 B (kMinBlockSize);
- ``get_pool``: requests of at most 1 MiB (kSmallSize) come from the small pool, others from the
  large pool;
- ``get_free_block``: the smallest cached block of the pool that holds the request (the pool is
  ordered by size, then address: ``BlockComparatorSize``);
- ``get_allocation_size``: otherwise a new segment of 2 MiB (kSmallBuffer) for a small request,
  20 MiB (kLargeBuffer) for one under 10 MiB (kMinLargeAlloc), else the request rounded up to
  2 MiB (kRoundLarge);
- ``should_split``: the block is split when what is left is at least 512 B (small pool) or more
  than 1 MiB (large pool); the request takes the block's start;
- ``free_block``: a freed block merges with its free neighbours in the same segment
  (``try_merge_blocks``);
- a cudaMalloc that fails releases every cached segment that is wholly free
  (``release_cached_blocks``) and retries once; a second failure is an out-of-memory error.

Addresses are the replay's own: segments are laid out in the order they are taken, never
adjacent (cudaMalloc's addresses decide only ties between cached blocks of equal size).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

#: c10/cuda/CUDACachingAllocator.cpp constants (PyTorch 2.1, unchanged through 2.x)
MIN_BLOCK_BYTES = 512  # kMinBlockSize
SMALL_SIZE_BYTES = 1 << 20  # kSmallSize: the small pool's largest request
SMALL_BUFFER_BYTES = 2 << 20  # kSmallBuffer: a small-pool segment
LARGE_BUFFER_BYTES = 20 << 20  # kLargeBuffer: a segment for a request under kMinLargeAlloc
MIN_LARGE_ALLOC_BYTES = 10 << 20  # kMinLargeAlloc
ROUND_LARGE_BYTES = 2 << 20  # kRoundLarge: larger segments are rounded up to this


def round_size(nbytes: int) -> int:
    """A request's size in the allocator: at least 512 B, a multiple of 512 B."""
    return max(MIN_BLOCK_BYTES, -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES)


def segment_size(size: int) -> int:
    """The cudaMalloc a rounded request ``size`` takes when no cached block holds it."""
    if size <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


class AllocatorOutOfMemory(Exception):
    """cudaMalloc failed again after the allocator released its free segments."""


class _Block:
    __slots__ = ("addr", "size", "free", "prev", "next", "small")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr, self.size, self.small = addr, size, small
        self.free = True
        self.prev: _Block | None = None
        self.next: _Block | None = None


#: A cached block's key in its pool: size << ADDRESS_BITS | address, so that one integer
#: orders the pool by size, then address (``BlockComparatorSize``) and names the block.
ADDRESS_BITS = 52
_ADDRESS_MASK = (1 << ADDRESS_BITS) - 1


class CachingAllocator:
    """One device's caching allocator on one stream. :meth:`malloc` returns a handle (a
    number never given out twice: the n-th allocation's is n) that :meth:`free` takes back;
    ``reserved_bytes`` / ``allocated_bytes`` and their peaks are ``torch.cuda.memory_reserved``
    / ``memory_allocated`` and their maxima (allocated counts the rounded block sizes, as
    PyTorch's ``allocated_bytes`` stat does)."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        # each pool's cached blocks, sorted keys (ADDRESS_BITS); True: the small pool
        self._pools: dict[bool, list[int]] = {True: [], False: []}
        self._blocks: dict[int, _Block] = {}  # address -> block, cached or allocated
        self._next_addr = 0
        self._live: dict[int, _Block] = {}  # handle -> its block
        self._handles = 0
        self.reserved_bytes = 0
        self.allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.peak_allocated_bytes = 0

    def cached_blocks(self, small: bool) -> list[tuple[int, int]]:
        """The pool's cached blocks as (size, address), in the order a request searches them."""
        return [(k >> ADDRESS_BITS, k & _ADDRESS_MASK) for k in self._pools[small]]

    def malloc(self, nbytes: int) -> int:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE_BYTES
        pool = self._pools[small]
        i = bisect.bisect_left(pool, size << ADDRESS_BITS)
        if i < len(pool):
            block = self._blocks[pool.pop(i) & _ADDRESS_MASK]
        else:
            block = self._new_segment(segment_size(size), small)
        rest = block.size - size
        if rest >= MIN_BLOCK_BYTES if small else rest > SMALL_SIZE_BYTES:
            tail = _Block(block.addr + size, rest, small)
            tail.prev, tail.next = block, block.next
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self._blocks[tail.addr] = tail
            bisect.insort(pool, rest << ADDRESS_BITS | tail.addr)
        block.free = False
        self.allocated_bytes += block.size
        if self.allocated_bytes > self.peak_allocated_bytes:
            self.peak_allocated_bytes = self.allocated_bytes
        self._handles += 1
        self._live[self._handles] = block
        return self._handles

    def free(self, handle: int) -> None:
        block = self._live.pop(handle, None)
        if block is None:
            raise ValueError(f"handle {handle} is not allocated (never, or freed already)")
        block.free = True
        self.allocated_bytes -= block.size
        pool, blocks = self._pools[block.small], self._blocks
        prev, nxt = block.prev, block.next
        if prev is not None and prev.free:  # prev absorbs block
            pool.pop(bisect.bisect_left(pool, prev.size << ADDRESS_BITS | prev.addr))
            del blocks[block.addr]
            prev.size += block.size
            prev.next = nxt
            if nxt is not None:
                nxt.prev = prev
            block = prev
        if nxt is not None and nxt.free:  # block absorbs next
            pool.pop(bisect.bisect_left(pool, nxt.size << ADDRESS_BITS | nxt.addr))
            del blocks[nxt.addr]
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        bisect.insort(pool, block.size << ADDRESS_BITS | block.addr)

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats``: the peaks restart from what is held now."""
        self.peak_reserved_bytes = self.reserved_bytes
        self.peak_allocated_bytes = self.allocated_bytes

    def _new_segment(self, size: int, small: bool) -> _Block:
        if self.capacity_bytes is not None and self.reserved_bytes + size > self.capacity_bytes:
            self._release_free_segments()
            if self.reserved_bytes + size > self.capacity_bytes:
                raise AllocatorOutOfMemory(size)
        if self._next_addr + size > _ADDRESS_MASK:
            raise ValueError(f"the replay's addresses passed 2^{ADDRESS_BITS} bytes")
        block = _Block(self._next_addr, size, small)
        self._blocks[block.addr] = block
        self._next_addr += 2 * size  # a gap: segments never merge
        self.reserved_bytes += size
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _release_free_segments(self) -> None:
        """``release_cached_blocks``: every cached block that is a whole segment goes back.
        Each pool is filtered in place: :meth:`malloc` holds its pool's list across the
        :meth:`_new_segment` that calls this and inserts the new segment's remainder into it
        (a rebuilt list left that remainder out of the pool, and a later merge with it
        failed: found by benchmarks/playbook_csv_rows.py on the 80B and 469B rows)."""
        for pool in self._pools.values():
            keep = []
            for key in pool:
                b = self._blocks[key & _ADDRESS_MASK]
                if b.prev is None and b.next is None:  # a whole segment, free
                    self.reserved_bytes -= b.size
                    del self._blocks[b.addr]
                else:
                    keep.append(key)
            pool[:] = keep


@dataclass(frozen=True, slots=True)
class ReplayPeaks:
    """What a replay held at most after its last ``reset`` event: reserved (the segments) and
    allocated (the live blocks)."""

    reserved_bytes: int
    allocated_bytes: int

    @property
    def cache_bytes(self) -> int:
        """Reserved beyond the allocated peak: what fragmentation costs a reserved figure."""
        return max(0, self.reserved_bytes - self.allocated_bytes)


def replay(events: Iterable[tuple[str, int]], capacity_bytes: int | None = None) -> ReplayPeaks:
    """Play ``events`` through a :class:`CachingAllocator`: ("alloc", bytes) takes a block
    whose handle is the event's index among the allocations, ("free", index) returns it,
    ("reset", 0) resets the peaks. Raises :class:`AllocatorOutOfMemory` where the device's
    ``capacity_bytes`` cannot hold a new segment."""
    a = CachingAllocator(capacity_bytes)
    malloc, free = a.malloc, a.free
    for kind, value in events:
        if kind == "alloc":
            malloc(value)
        elif kind == "free":
            free(value + 1)  # the allocation of index i has handle i + 1
        elif kind == "reset":
            a.reset_peaks()
        else:
            raise ValueError(f"unknown allocator event {kind!r}")
    return ReplayPeaks(a.peak_reserved_bytes, a.peak_allocated_bytes)
