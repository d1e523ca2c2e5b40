"""The caching allocator replay against the rules of c10/cuda/CUDACachingAllocator.cpp, each
case worked out by hand from them, and the fragmentation replay's invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.costs.caching_allocator import (
    ADDRESS_BITS,
    AllocatorOutOfMemory,
    CachingAllocator,
    replay,
    round_size,
    segment_size,
)
from simtrain.costs.fragmentation import (
    STEPS,
    StageAllocations,
    replay_stage,
    stage_allocation_events,
)

MIB = 1 << 20


def test_round_size_is_512_multiples():
    assert round_size(1) == 512
    assert round_size(512) == 512
    assert round_size(513) == 1024
    assert round_size(10 * MIB + 1) == 10 * MIB + 512


def test_segment_sizes():
    """kSmallBuffer for <= 1 MiB, kLargeBuffer for < 10 MiB, else rounded up to 2 MiB."""
    assert segment_size(512) == 2 * MIB
    assert segment_size(MIB) == 2 * MIB
    assert segment_size(MIB + 512) == 20 * MIB
    assert segment_size(10 * MIB - 512) == 20 * MIB
    assert segment_size(10 * MIB) == 10 * MIB
    assert segment_size(11 * MIB) == 12 * MIB


def test_small_requests_share_a_2mib_segment():
    a = CachingAllocator()
    for _ in range(4):
        a.malloc(512 * 1024)  # four 0.5 MiB requests fill one 2 MiB segment
    assert a.reserved_bytes == 2 * MIB
    a.malloc(1)
    assert a.reserved_bytes == 4 * MIB


def test_mid_requests_split_a_20mib_segment():
    """Requests of 1-10 MiB are carved from 20 MiB segments: four of 5 MiB take one."""
    a = CachingAllocator()
    for _ in range(4):
        a.malloc(5 * MIB)
    assert a.reserved_bytes == 20 * MIB
    assert a.allocated_bytes == 20 * MIB


def test_large_pool_keeps_a_remainder_of_1mib_unsplit():
    """should_split: the large pool splits only when more than 1 MiB would be left, so a
    12 MiB block serving an 11.5 MiB request stays whole (0.5 MiB left inside it)."""
    a = CachingAllocator()
    h = a.malloc(12 * MIB)
    a.free(h)
    a.malloc(11 * MIB + 512 * 1024)
    assert a.allocated_bytes == 12 * MIB
    assert a.reserved_bytes == 12 * MIB


def test_fragmentation_from_a_split_block():
    """The allocator's classic case: a freed 100 MiB block serves a 10 MiB request (best fit,
    split), and the 100 MiB request after it no longer fits in the 90 MiB left: a new
    segment, 200 MiB reserved for 110 MiB allocated."""
    a = CachingAllocator()
    a.free(a.malloc(100 * MIB))
    a.malloc(10 * MIB)
    a.malloc(100 * MIB)
    assert a.reserved_bytes == 200 * MIB
    assert a.allocated_bytes == 110 * MIB


def test_best_fit_takes_the_smallest_block_that_holds_the_request():
    a = CachingAllocator()
    big, small = a.malloc(100 * MIB), a.malloc(30 * MIB)
    a.free(big)
    a.free(small)
    a.malloc(20 * MIB)  # from the 30 MiB block
    a.malloc(100 * MIB)  # the 100 MiB block is still whole
    assert a.reserved_bytes == 130 * MIB


def test_freed_neighbours_merge():
    """Three blocks split from one segment, freed in any order, merge back into it: a request
    of the whole segment then needs no new one."""
    a = CachingAllocator()
    a.free(a.malloc(60 * MIB))
    hs = [a.malloc(20 * MIB) for _ in range(3)]
    assert a.reserved_bytes == 60 * MIB
    for h in (hs[0], hs[2], hs[1]):
        a.free(h)
    a.malloc(60 * MIB)
    assert a.reserved_bytes == 60 * MIB


def test_out_of_memory_releases_free_segments_first():
    a = CachingAllocator(capacity_bytes=100 * MIB)
    a.free(a.malloc(60 * MIB))
    a.malloc(80 * MIB)  # 60 + 80 > 100: the free 60 MiB segment goes back, then it fits
    assert a.reserved_bytes == 80 * MIB
    with pytest.raises(AllocatorOutOfMemory):
        a.malloc(30 * MIB)


def test_a_release_keeps_the_new_segments_remainder_cached():
    """cudaMalloc fails, the free segments go back, the new segment is split: its remainder is
    cached in the live pool, and freeing the request merges them into one free segment (the
    release used to rebuild the pool list that malloc had in hand, and this free failed with
    IndexError: found on the Playbook CSV's 80B and 469B rows)."""
    a = CachingAllocator(capacity_bytes=21 * MIB)
    a.free(a.malloc(1024))  # a small-pool segment of 2 MiB, wholly free
    h = a.malloc(5 * MIB)  # a 20 MiB segment: 2 + 20 > 21, so the free 2 MiB goes back first
    assert a.reserved_bytes == 20 * MIB
    assert a.cached_blocks(small=True) == []
    assert [s for s, _ in a.cached_blocks(small=False)] == [15 * MIB]
    a.free(h)
    assert [s for s, _ in a.cached_blocks(small=False)] == [20 * MIB]
    assert a.allocated_bytes == 0 and a.reserved_bytes == 20 * MIB


def test_double_free_is_refused():
    a = CachingAllocator()
    h = a.malloc(MIB)
    a.free(h)
    with pytest.raises(ValueError, match="not allocated"):
        a.free(h)


def test_replay_peaks_after_reset():
    events = [("alloc", 40 * MIB), ("free", 0), ("reset", 0), ("alloc", 10 * MIB)]
    peaks = replay(events)
    assert peaks.reserved_bytes == 40 * MIB  # the segment stays reserved
    assert peaks.allocated_bytes == 10 * MIB
    assert peaks.cache_bytes == 30 * MIB


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 64 * MIB)), max_size=60),
    st.one_of(st.none(), st.integers(20 * MIB, 256 * MIB)),
)
def test_reserved_covers_allocated_and_frees_restore(ops, capacity):
    """Invariants: allocated <= reserved (<= the capacity, where there is one) at every point;
    each block is at least the request; freeing everything leaves 0 allocated and every cached
    block whole again (one per segment, so a request of a segment's size needs no new segment).
    With a capacity, requests that do not fit raise AllocatorOutOfMemory after the free
    segments are released, and the replay goes on."""
    a = CachingAllocator(capacity)
    live = []
    for do_free, n in ops:
        if do_free and live:
            a.free(live.pop(n % len(live)))
        else:
            before = a.allocated_bytes
            try:
                live.append(a.malloc(n))
            except AllocatorOutOfMemory:
                assert capacity is not None
                continue
            # the block is the rounded request: a whole block when the rest is too small to
            # split (large pool: <= 1 MiB), never less than the request
            grown = a.allocated_bytes - before
            assert grown >= round_size(n) >= n
            assert grown == round_size(n) or grown - round_size(n) <= (
                512 if round_size(n) <= MIB else MIB)  # fmt: skip
        assert 0 <= a.allocated_bytes <= a.reserved_bytes
        assert capacity is None or a.reserved_bytes <= capacity
    for h in live:
        a.free(h)
    assert a.allocated_bytes == 0
    assert sorted(s for small in (True, False) for s, _ in a.cached_blocks(small)) == sorted(
        b.size for b in a._blocks.values()
    )
    assert all(b.prev is None and b.next is None for b in a._blocks.values())


def _stage(**kw):
    base = dict(parameters=(64 * MIB, 64 * MIB), persistent=(256 * MIB,), layers=2,
                layer_saved=(16 * MIB, 48 * MIB, 8 * MIB), layer_gradients=(64 * MIB,),
                end_saved=32 * MIB, end_gradients=(), loss=40 * MIB,
                gradients_per_microbatch=True, optimizer_states=(128 * MIB,) * 2,
                step_working=(96 * MIB,), actions=("F", "F", "B", "F", "B", "B"))  # fmt: skip
    base.update(kw)
    return StageAllocations(**base)


def test_stage_events_balance():
    """Every free returns a live allocation, each once; by the end only the start-up tensors
    and the optimizer states are left (the gradients go at each backward's end, or after
    each optimizer step: zero_grad(set_to_none=True)); one reset, before the last step; each
    step plays every micro-batch's forward with its loss working memory."""
    for per_mb in (True, False):
        a = _stage(gradients_per_microbatch=per_mb)
        events = list(stage_allocation_events(a))
        live: dict[int, int] = {}
        n = 0
        for kind, v in events:
            if kind == "alloc":
                live[n] = v
                n += 1
            elif kind == "free":
                assert v in live  # a live allocation, freed once
                del live[v]
        kept = sorted(live.values())
        assert kept == sorted((*a.parameters, *a.persistent, *a.optimizer_states))
        (reset,) = [i for i, e in enumerate(events) if e[0] == "reset"]
        states = [i for i, e in enumerate(events) if e == ("alloc", a.optimizer_states[0])]
        assert states and max(states) < reset  # the states, made by the first step
        assert sum(1 for e in events[reset:] if e == ("alloc", a.loss)) == sum(
            1 for x in a.actions if x == "F"
        )  # the last step whole after it
        micro = sum(1 for x in a.actions if x == "F")
        forwards = sum(1 for e in events if e == ("alloc", a.loss))
        assert forwards == STEPS * micro


def test_stage_replay_holds_the_walk_peak():
    """The replay's allocated peak is the start-up tensors, the optimizer states and two
    micro-batches in flight (the 1F1B order above) with one block's gradients at the
    backward's fullest: a bound from below, from the sum of its parts."""
    a = _stage()
    peaks = replay(stage_allocation_events(a))
    start = sum(a.parameters) + sum(a.persistent) + sum(a.optimizer_states)
    micro = a.layers * sum(a.layer_saved) + a.end_saved
    assert peaks.allocated_bytes >= start + 2 * micro
    assert peaks.reserved_bytes >= peaks.allocated_bytes


def test_lazy_optimizer_states_fragment_the_next_step():
    """Worked by hand: step 1's forward takes a 100 MiB segment A, its backward a gradient in
    segment B; both freed, the optimizer's lazily made 10 MiB state is carved from A (best fit,
    the lower address of two equal blocks). Step 2's forward takes B whole, and its backward's
    100 MiB gradient fits in neither A's 90 MiB nor anything else: segment C. 300 MiB reserved
    for a 210 MiB peak (10 + 100 + 100): 90 MiB of fragmentation. Within 250 MiB the
    allocator has no whole free segment to release: out of memory; within 300 it fits."""
    a = _stage(parameters=(), persistent=(), layers=1, layer_saved=(100 * MIB,),
               layer_gradients=(), end_saved=0, loss=0, optimizer_states=(10 * MIB,),
               step_working=(), actions=("F", "B"))  # fmt: skip
    peaks = replay(stage_allocation_events(a))
    assert (peaks.reserved_bytes, peaks.allocated_bytes) == (300 * MIB, 210 * MIB)
    assert replay_stage(a, 210 * MIB, 300 * MIB) == (90 * MIB, False)
    assert replay_stage(a, 210 * MIB, 250 * MIB) == (90 * MIB, True)
    # the memory model holding 40 MiB more than the replay leaves it 260 MiB of 300
    assert replay_stage(a, 250 * MIB, 300 * MIB) == (90 * MIB, True)
    # the model holding 60 MiB less than the replay: 240 MiB with its fragmentation, which
    # fits 250 and not 230 (the replay then runs within 290 and needs 300)
    assert replay_stage(a, 150 * MIB, 250 * MIB) == (90 * MIB, False)
    assert replay_stage(a, 150 * MIB, 230 * MIB) == (90 * MIB, True)


def test_a_stale_handle_is_refused_even_where_its_address_is_reused():
    """Handles are never given out twice: freeing a handle again after its block's address
    went to a new allocation (or after a merge) is an error, not a free of the live block."""
    a = CachingAllocator()
    h = a.malloc(MIB)
    a.free(h)
    h2 = a.malloc(MIB)  # the same address again
    with pytest.raises(ValueError, match="not allocated"):
        a.free(h)
    assert a.allocated_bytes == MIB
    a.free(h2)
    big = a.malloc(60 * MIB)
    a.free(big)
    parts = [a.malloc(20 * MIB) for _ in range(3)]
    for p in parts:
        a.free(p)  # merged back into one block
    with pytest.raises(ValueError, match="not allocated"):
        a.free(parts[1])


def test_pool_keys_refuse_an_address_past_their_bits():
    """A cached block's pool key is size << ADDRESS_BITS | address: an address that needs more
    bits would order the pool wrongly, so the segment that would reach it is refused (two
    segments of 2^(ADDRESS_BITS - 2) bytes fit, with their gaps; a third does not)."""
    a = CachingAllocator()
    big = 1 << (ADDRESS_BITS - 2)
    a.malloc(big)
    a.malloc(big)
    with pytest.raises(ValueError, match="2\\^52"):
        a.malloc(big)
    assert a.cached_blocks(False) == []  # whole segments, nothing split off
