"""A host that polls its pipeline messages (runtime ``p2p_poll_interval_s``; nanotron's bench
branch, ``runtimes/nanotron_bench.yaml``), against closed forms written out here:

* the engine's poll loop: a task that starts at t0 and polls for a task ending at t1 ends at
  t0 + T·max(1, ceil((t1 − t0) / T)) (``while not work.is_completed(): time.sleep(T)``: one
  sleep before the first look);
* a pipeline whose compute is negligible next to T: with pp 2 each end stage polls 6 messages
  per micro-batch (4 forward, 2 backward) and never waits for the other, so the step grows by
  6·m·T; with pp ≥ 3 a middle stage polls 12 per micro-batch (receives and sends, both ways),
  and its first backward waits for its micro-batch's round trip through stages 2..pp−1, of
  which the stage's own polling covers none past pp = 3: one forward hop (4T) and one backward
  hop (2T) per further stage, 12·m·T + 6·(pp − 3)·T;
* bad settings: one line naming the key and the allowed values.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runtime import TINY, scenario_file, step_ns

from simtrain.apps.simulate import simulate_scenario
from simtrain.errors import ConfigError, DeadlockError
from simtrain.sim.engine import Task, simulate
from simtrain.spec.runtime import load_runtime
from simtrain.spec.scenario import parse_scenario


def _ends(tasks):
    return {s.task_id: (s.start_ns, s.end_ns) for s in simulate(tasks).spans}


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 3_000))
@settings(max_examples=200, deadline=None)
def test_a_poll_ends_at_the_first_look_after_its_task(t0, t1, interval):
    """The poller starts at t0 (its stream's previous task), the polled task ends at t1."""
    tasks = [
        Task(0, 0, "compute", "F", "polled", t1),
        Task(1, 1, "host", "X", "before", t0),
        Task(2, 1, "host", "POLL", "poll", 0, poll_ns=interval, polled=(0,)),
    ]
    start, end = _ends(tasks)[2]
    assert start == t0
    assert end == t0 + interval * max(1, math.ceil((t1 - t0) / interval))


@pytest.mark.parametrize("split", [(10, 0), (9, 1), (1, 9), (0, 10)])
def test_a_look_sees_a_task_ending_at_its_time_whatever_the_event_order(split):
    """The polled task ends at 10 = a + b (a chain of two tasks: their timeouts are scheduled
    before or after the poll's), the looks are at 5 and 10: the poll ends at 10."""
    a, b = split
    tasks = [
        Task(0, 0, "compute", "F", "a", a),
        Task(1, 0, "compute", "F", "b", b, deps=(0,)),
        Task(2, 1, "host", "POLL", "poll", 0, poll_ns=5, polled=(1,)),
    ]
    assert _ends(tasks)[2] == (0, 10)


def test_a_poll_with_nothing_to_wait_for_sleeps_once_after_its_duration():
    end = _ends([Task(0, 0, "host", "META", "issue", 7, poll_ns=100)])[0][1]
    assert end == 107


def test_polls_that_wait_for_each_other_are_a_deadlock_not_an_endless_loop():
    tasks = [
        Task(0, 0, "host", "POLL", "a", 0, poll_ns=10, polled=(1,)),
        Task(1, 1, "host", "POLL", "b", 0, poll_ns=10, polled=(0,)),
    ]
    with pytest.raises(DeadlockError) as e:
        simulate(tasks)
    assert "'a' (id 0) waits for 'b'" in str(e.value)


def test_a_poll_outlives_a_long_task_it_does_not_wait_for():
    """Another stream's long task keeps SimPy's queue busy: the poll keeps looking, then ends
    at its first look after the polled task (which waits for the long one)."""
    tasks = [
        Task(0, 0, "compute", "F", "long", 1_000),
        Task(1, 0, "compute", "F", "polled", 5),
        Task(2, 1, "host", "POLL", "poll", 0, poll_ns=300, polled=(1,)),
    ]
    assert _ends(tasks)[2] == (0, 1_200)


@pytest.mark.parametrize(
    ("task", "words"),
    [
        (Task(0, 0, "host", "POLL", "p", 0, polled=(0,)), "poll_ns 0"),
        (Task(0, 0, "host", "POLL", "p", 0, poll_ns=5, polled=(9,)), "unknown polled id"),
        (Task(0, 0, "host", "POLL", "p", 0, poll_ns=-1), ">= 0"),
    ],
)
def test_bad_polls_are_value_errors_naming_the_task(task, words):
    with pytest.raises(ValueError, match=words):
        simulate([task])


# ---------------------------------------------------------------------------------------------
# A polling pipeline


def polling_step(pp: int, m: int, runtime: dict) -> int:
    data = {
        "name": "poll",
        "model": {**TINY, "layers": 8},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 128, "global_batch": 2 * m, "micro_batch": 2,
                     "precision": "bf16"},
        "parallelism": {"dp": 1, "tp": 1, "pp": pp, "schedule": "1f1b"},
        "runtime": runtime,
    }  # fmt: skip
    return step_ns(parse_scenario(data, "poll.yaml"))


@pytest.mark.parametrize(("pp", "m"), [(2, 4), (2, 16), (4, 8), (4, 32), (8, 8), (8, 16)])
def test_a_host_bound_polling_pipeline_pays_its_polls(pp, m):
    """T = 1 s, compute ~1 ms: the step is the polls' closed form (module docstring) plus at
    most the same pipeline's step without polling (its work and transfers, which the sleeps
    partly cover); with pp 2 the ends never wait, so exactly the sum (to 1 ms)."""
    interval = 1.0
    base = polling_step(pp, m, {"name": "nanotron"})
    polled = polling_step(pp, m, {"name": "nanotron_bench", "p2p_poll_interval_s": interval})
    sleeps = 6 * m if pp == 2 else 12 * m + 6 * (pp - 3)
    polls_ns = sleeps * interval * 1e9
    if pp == 2:
        assert polled - base == pytest.approx(polls_ns, abs=1e6)
    assert polls_ns <= polled <= polls_ns + base


def _polls(pp: int, m: int, schedule: str, v: int = 1) -> int:
    data = {
        "name": "poll", "model": {**TINY, "layers": 8}, "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 128, "global_batch": 2 * m, "micro_batch": 2,
                     "precision": "bf16"},
        "parallelism": {"dp": 1, "tp": 1, "pp": pp, "schedule": schedule,
                        "virtual_stages": v},
        "runtime": {"name": "nanotron_bench"},
    }  # fmt: skip
    spans = simulate_scenario(parse_scenario(data, "poll.yaml")).timeline.spans
    return sum(1 for s in spans if s.kind == "POLL")


@pytest.mark.parametrize(("schedule", "hops"), [("1f1b", lambda pp: pp - 1),
                                                ("gpipe", lambda pp: pp - 1),
                                                ("interleaved", lambda pp: 2 * pp - 1),
                                                ("zb_v", lambda pp: 2 * pp - 2)])  # fmt: skip
def test_polls_are_paid_on_every_hop_between_ranks_and_no_other(schedule, hops):
    """Each micro-batch crosses ``hops`` rank boundaries each way; a forward hop polls 4
    messages on each side, a backward hop 2: 12 looks' loops per hop and micro-batch. The V
    schedule's turn (stages pp-1 and pp on one rank) and nothing else is free; interleaving
    with 2 chunks per rank crosses 2·pp − 1 boundaries."""
    pp, m = 4, 8
    v = 2 if schedule == "interleaved" else 1
    assert _polls(pp, m, schedule, v) == 12 * m * hops(pp)


def test_polling_nothing_but_one_message_each_way_costs_two_sleeps_per_microbatch():
    """pp 2, one polled message forward and one backward: 2·m·T."""
    rt = {"name": "nanotron_bench", "p2p_poll_interval_s": 1.0,
          "p2p_polled_messages_forward": 1, "p2p_polled_messages_backward": 1}  # fmt: skip
    base = polling_step(2, 8, {"name": "nanotron"})
    assert polling_step(2, 8, rt) - base == pytest.approx(2 * 8 * 1e9, abs=1e6)


def test_the_bench_profile_polls_what_its_block_sends():
    """2 tensors forward (hidden_states, sequence_mask), 1 gradient backward, 2 metadata
    messages each, every 0.1 s; all else as main's nanotron but the environment the bench
    profile fixes (the sweep's PyTorch 2.1: nccl_record_streams on; main's profile off, set per
    record by validate: runtimes/nanotron.yaml [rstr])."""
    bench, main = load_runtime("nanotron_bench"), load_runtime("nanotron")
    assert bench.p2p_poll_interval_s == 0.1
    assert (bench.p2p_polled_messages_forward, bench.p2p_polled_messages_backward) == (4, 2)
    assert main.p2p_poll_interval_s == 0
    assert bench.nccl_record_streams and not main.nccl_record_streams
    skip = {"name", "display_name", "source_file", "p2p_poll_interval_s",
            "p2p_polled_messages_forward", "p2p_polled_messages_backward",
            "nccl_record_streams"}  # fmt: skip
    for f in bench.__dataclass_fields__:
        if f not in skip:
            assert getattr(bench, f) == getattr(main, f), f


@pytest.mark.parametrize(
    ("runtime", "key", "words"),
    [
        ({"name": "nanotron", "p2p_poll_interval_s": 0.1}, "runtime.p2p_poll_interval_s",
         "nothing is polled"),
        ({"name": "nanotron_bench", "p2p": "async"}, "runtime.p2p_poll_interval_s",
         "runtime.p2p: blocking"),
        ({"name": "nanotron_bench", "p2p_polled_messages_forward": 6},
         "runtime.p2p_polled_messages_forward", "allowed: 0..5"),
        ({"name": "nanotron", "p2p_polled_messages_backward": 1},
         "runtime.p2p_polled_messages_backward", "p2p_poll_interval_s > 0"),
        ({"name": "nanotron_bench", "p2p_poll_interval_s": 1e-10}, "runtime.p2p_poll_interval_s",
         "busy wait"),
        ({"name": "nanotron_bench", "p2p_poll_interval_s": 11}, "runtime.p2p_poll_interval_s",
         "<="),
    ],
)  # fmt: skip
def test_bad_polling_settings_are_one_line_naming_the_key(tmp_path, runtime, key, words):
    with pytest.raises(ConfigError) as e:
        scenario_file(tmp_path, runtime, pp=2, schedule="1f1b")
    msg = str(e.value)
    assert "\n" not in msg
    assert key in msg
    assert words in msg
