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


class CachingAllocator:
    """One device's caching allocator on one stream. :meth:`malloc` returns a handle (a
    number never given out twice) that :meth:`free` takes back; ``reserved_bytes`` / ``allocated_bytes`` and their peaks are
    ``torch.cuda.memory_reserved`` / ``memory_allocated`` and their maxima (allocated counts the
    rounded block sizes, as PyTorch's ``allocated_bytes`` stat does)."""

    def __init__(self, capacity_bytes: int | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self._pools: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._blocks: dict[int, _Block] = {}
        self._next_addr = 0
        self._live: dict[int, _Block] = {}  # handle -> its block
        self._handles = 0
        self.reserved_bytes = 0
        self.allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.peak_allocated_bytes = 0

    def malloc(self, nbytes: int) -> int:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE_BYTES
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = self._blocks[pool.pop(i)[1]]
        else:
            block = self._new_segment(segment_size(size), small)
        rest = block.size - size
        if rest >= MIN_BLOCK_BYTES if small else rest > SMALL_SIZE_BYTES:
            tail = _Block(block.addr + size, rest, small)
            tail.prev, tail.next = block, block.next
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self._cache(tail)
        block.free = False
        self._blocks[block.addr] = block
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
        prev, nxt = block.prev, block.next
        if prev is not None and prev.free:  # prev absorbs block
            self._uncache(prev)
            del self._blocks[block.addr]
            prev.size += block.size
            prev.next = nxt
            if nxt is not None:
                nxt.prev = prev
            block = prev
        if nxt is not None and nxt.free:  # block absorbs next
            self._uncache(nxt)
            del self._blocks[nxt.addr]
            block.size += nxt.size
            block.next = nxt.next
            if nxt.next is not None:
                nxt.next.prev = block
        self._cache(block)

    def reset_peaks(self) -> None:
        """``torch.cuda.reset_peak_memory_stats``: the peaks restart from what is held now."""
        self.peak_reserved_bytes = self.reserved_bytes
        self.peak_allocated_bytes = self.allocated_bytes

    def _new_segment(self, size: int, small: bool) -> _Block:
        if self.capacity_bytes is not None and self.reserved_bytes + size > self.capacity_bytes:
            self._release_free_segments()
            if self.reserved_bytes + size > self.capacity_bytes:
                raise AllocatorOutOfMemory(size)
        block = _Block(self._next_addr, size, small)
        self._next_addr += 2 * size  # a gap: segments never merge
        self.reserved_bytes += size
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _release_free_segments(self) -> None:
        for small, pool in self._pools.items():
            keep = []
            for size, addr in pool:
                b = self._blocks[addr]
                if b.prev is None and b.next is None:  # a whole segment, free
                    self.reserved_bytes -= size
                    del self._blocks[addr]
                else:
                    keep.append((size, addr))
            self._pools[small] = keep

    def _cache(self, block: _Block) -> None:
        bisect.insort(self._pools[block.small], (block.size, block.addr))
        self._blocks[block.addr] = block

    def _uncache(self, block: _Block) -> None:
        pool = self._pools[block.small]
        pool.pop(bisect.bisect_left(pool, (block.size, block.addr)))


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
    handles: list[int] = []
    malloc, free, keep = a.malloc, a.free, handles.append
    for kind, value in events:
        if kind == "alloc":
            keep(malloc(value))
        elif kind == "free":
            free(handles[value])
        elif kind == "reset":
            a.reset_peaks()
        else:
            raise ValueError(f"unknown allocator event {kind!r}")
    return ReplayPeaks(a.peak_reserved_bytes, a.peak_allocated_bytes)
