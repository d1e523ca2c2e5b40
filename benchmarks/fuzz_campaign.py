"""The long hostile-input campaign of issue 15: tens of thousands of generated CLI cases.

    python benchmarks/fuzz_campaign.py --cases 20000 --seed 0 --workers 2 --out fuzz-out

Cases come from ``tests/fuzz_cases.py`` (Hypothesis strategies: valid-but-unusual and broken
scenario, hardware, HF config, plan and records files, ``--set`` and ``--variants``; commands
memory, memory --json, run --json, schedule, topology, compare --json, plan --json, validate
--json), generated in chunks of a few hundred and run by ``--workers`` processes, each case in
a folder of its own under a time limit (SIGALRM at ``--limit-s``, and ``faulthandler`` ends a
worker stuck in C code ``--grace-s`` later; the worker is replaced) and an address-space cap.

Prints, and writes to ``OUT/summary.json``, the counts per class (tracebacks, timeouts,
over-long messages, bad messages, bad exit codes, invariant breaks, crashes), exits by code,
classes per command, each failure signature with its count, the slowest cases and the
messages that rejected cases drawn as valid. Every failing case gets a reproducer folder
``OUT/repro/<class>/<case id>/`` (its files, ``cmd.sh`` to run from there, ``case.json``,
``outcome.txt``) and a line in ``OUT/failures.jsonl``; every case a line in
``OUT/cases.jsonl``. The first case of each signature is also minimised (lines of its files
and ``--set`` arguments dropped while the signature holds) into ``OUT/minimal/``.

    python benchmarks/fuzz_campaign.py --replay OUT/repro/traceback/<id>/case.json
    python benchmarks/fuzz_campaign.py --minimize OUT/repro/traceback/<id>/case.json

Exit status 0 when no case failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import json
import multiprocessing as mp
import re
import signal
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import fuzz_cases as fc  # noqa: E402

# Share of each command family in the campaign (the slow ones, which write plots, less).
MIX = {
    "memory": 0.16, "memory_json": 0.14, "run": 0.18, "schedule": 0.10, "topology": 0.10,
    "compare": 0.10, "plan": 0.11, "validate": 0.11,
}  # fmt: skip
TIME_LIMIT_S = 10.0  # no case may run longer (issue 15)
CHUNK = 400  # cases generated at a time (all families)
RECYCLE_AFTER = 400  # a worker is replaced after this many cases (caches, leaks)


# ---------------------------------------------------------------------------------------------
# The per-case time limit (the test suite reads no clock: tests/fuzz_cases.Timing)

_FIRED: list[float] = []  # when the alarm of the running case fired


def _alarm(signum: int, frame: Any) -> None:
    """Raise CaseTimeout; again a second later (the timer repeats) if the first was swallowed
    (raised inside a finalizer or a garbage-collector callback, which print and drop it)."""
    now = time.monotonic()
    if not _FIRED or now - _FIRED[-1] > 0.9:
        _FIRED.append(now)
        raise fc.CaseTimeout("over the per-case limit")


def timing(limit_s: float) -> fc.Timing:
    """SIGALRM after ``limit_s`` (repeating every second until the case ends), and the clock."""

    @contextlib.contextmanager
    def guard() -> Any:
        old_handler = signal.signal(signal.SIGALRM, _alarm)
        _FIRED.clear()
        signal.setitimer(signal.ITIMER_REAL, limit_s, 1.0)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)

    return fc.Timing(limit_s, guard, time.perf_counter)


# ---------------------------------------------------------------------------------------------
# Workers


def _worker(conn: Connection, index: int, scratch: str, limit_s: float, grace_s: float) -> None:
    """Run cases sent over ``conn`` until None; answer each with its trimmed Outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import simtrain.cli  # noqa: F401 - warm the imports before the first timed case

    log = open(Path(scratch) / f"worker{index}.faults", "w")  # noqa: SIM115
    while True:
        msg = conn.recv()
        if msg is None:
            return
        case_id, case = msg
        log.seek(0)
        log.truncate()
        faulthandler.dump_traceback_later(limit_s + grace_s, exit=True, file=log)
        try:
            out = fc.run_case(case, Path(scratch) / f"w{index}" / case_id, timing(limit_s))
        finally:
            faulthandler.cancel_dump_traceback_later()
        out.stdout_len, out.stderr_len = len(out.stdout), len(out.stderr)  # type: ignore[attr-defined]
        out.stdout, out.stderr = out.stdout[:4000], out.stderr[:4000]
        conn.send((case_id, out))


class Pool:
    """``n`` worker processes, each on a Pipe; one case at a time per worker; a worker that
    dies (faulthandler's hard timeout, a crash) or overruns is replaced."""

    def __init__(self, n: int, scratch: str, limit_s: float, grace_s: float) -> None:
        self.ctx = mp.get_context("fork")
        self.scratch, self.limit_s, self.grace_s = scratch, limit_s, grace_s
        self.slots: list[dict[str, Any]] = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> dict[str, Any]:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, args=(child, i, self.scratch, self.limit_s,
                                                    self.grace_s), daemon=True)  # fmt: skip
        p.start()
        child.close()
        return {"i": i, "proc": p, "conn": parent, "job": None, "t0": 0.0, "done": 0}

    def _restart(self, s: dict[str, Any]) -> None:
        if s["proc"].is_alive():
            s["proc"].kill()
        s["proc"].join(5)
        s["conn"].close()
        self.slots[s["i"]] = self._start(s["i"])

    def run(self, jobs: list[tuple[str, fc.Case]], on_result: Any) -> None:
        pending = list(reversed(jobs))
        while pending or any(s["job"] for s in self.slots):
            for s in self.slots:
                if s["job"] is None and pending:
                    if s["done"] >= RECYCLE_AFTER:
                        s["conn"].send(None)
                        self._restart(s)
                        s = self.slots[s["i"]]
                    job = pending.pop()
                    s["conn"].send(job)
                    s["job"], s["t0"] = job, time.monotonic()
            busy = {s["conn"]: s for s in self.slots if s["job"]}
            for conn in wait(list(busy), timeout=1.0):
                s = busy[conn]
                case_id, case = s["job"]
                try:
                    rid, out = conn.recv()
                    assert rid == case_id
                except (EOFError, OSError):
                    out = self._dead(s)
                    self._restart(s)
                    s = self.slots[s["i"]]
                s["job"] = None
                s["done"] += 1
                on_result(case_id, case, out)
            now = time.monotonic()
            for s in list(self.slots):  # a worker past every limit: kill it
                if s["job"] and now - s["t0"] > self.limit_s + self.grace_s + 30:
                    case_id, case = s["job"]
                    s["proc"].kill()
                    out = self._dead(s)
                    self._restart(s)
                    on_result(case_id, case, out)

    def _dead(self, s: dict[str, Any]) -> fc.Outcome:
        """The Outcome of a case whose worker died: a hard timeout when faulthandler ended
        it (its dump names the stuck frame), else a crash."""
        s["proc"].join(5)
        case_id, case = s["job"]
        seconds = time.monotonic() - s["t0"]
        dump = ""
        with contextlib.suppress(Exception):
            dump = (Path(self.scratch) / f"worker{s['i']}.faults").read_text()
        frames = re.findall(r'File "([^"]+)", line \d+ in (\S+)', dump)
        ours = [(f, fn) for f, fn in frames if "/simtrain/" in f]
        f, fn = (ours or frames or [("?", "?")])[0]  # faulthandler: innermost first
        where = f"{f.split('/simtrain/', 1)[-1]}:{fn}"
        code = s["proc"].exitcode
        hard = seconds >= self.limit_s + self.grace_s - 1
        out = fc.Outcome(case.family, code, seconds, "", "", exception=(
            f"timeout: worker ended after {seconds:.0f} s" if hard else f"crash: exit {code}"),
            where=where, trace=dump[:4000])  # fmt: skip
        out.failures = [("timeout" if hard else "crash", f"{case.family} @ {where}")]
        out.stdout_len = out.stderr_len = 0  # type: ignore[attr-defined]
        return out

    def close(self) -> None:
        for s in self.slots:
            with contextlib.suppress(Exception):
                s["conn"].send(None)
            s["proc"].join(5)
            if s["proc"].is_alive():
                s["proc"].kill()


# ---------------------------------------------------------------------------------------------
# Minimising a failing case


def minimize(case: fc.Case, scratch: Path, limit_s: float, budget_s: float = 30.0) -> fc.Case:
    """Drop ``--set`` pairs, flags and lines of the case's text files while its failure
    signature stays the same (greedy, passes until nothing more goes or ``budget_s`` is
    spent)."""
    want = fc.run_case(case, scratch / "m", timing(limit_s)).failures
    if not want:
        return case
    runs = 0
    deadline = time.monotonic() + budget_s

    def same(c: fc.Case) -> bool:
        nonlocal runs
        runs += 1
        return fc.run_case(c, scratch / f"m{runs}", timing(limit_s)).failures == want

    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        argv = list(case.argv)
        i = 0
        while i < len(argv) and time.monotonic() < deadline:
            n = 2 if argv[i] in ("--set", "--out") else 1 if argv[i] in (
                "--explain", "--ladder", "--no-plots") else 0  # fmt: skip
            if n and same(replace(case, argv=tuple(argv[:i] + argv[i + n :]))):
                argv = argv[:i] + argv[i + n :]
                case = replace(case, argv=tuple(argv))
                changed = True
            else:
                i += 1
        for k, f in enumerate(case.files):
            if f.kind != "file" or len(f.data) > 200_000 or not f.data:
                continue
            lines = f.data.split(b"\n")
            j = len(lines) - 1
            while j >= 0 and time.monotonic() < deadline:
                trial = lines[:j] + lines[j + 1 :]
                files = list(case.files)
                files[k] = replace(f, data=b"\n".join(trial))
                if same(replace(case, files=tuple(files))):
                    lines, case, changed = trial, replace(case, files=tuple(files)), True
                    f = case.files[k]
                j -= 1
        files = [f for f in case.files]
        for f in list(files):  # side files the case does not need
            trial = [g for g in files if g is not f]
            if same(replace(case, files=tuple(trial))):
                files, case, changed = trial, replace(case, files=tuple(trial)), True
    return case


def describe_case(case: fc.Case) -> str:
    """The case as text: each file (YAML shown as is, up to 1,500 characters), then the command."""
    out = []
    for f in case.files:
        if f.kind != "file":
            out.append(f"# {f.name}: {f.kind}" + (f" -> {f.data.decode()}" if f.data else ""))
            continue
        text = f.data.decode("utf-8", "backslashreplace")
        more = f" ... ({len(f.data):,} bytes)" if len(text) > 1500 else ""
        out.append(f"# {f.name}\n{text[:1500]}{more}")
    out.append(f"$ {case.command_line()[:1500]}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The campaign


def _family_counts(n: int, families: list[str]) -> dict[str, int]:
    w = {f: MIX[f] for f in families}
    total = sum(w.values())
    counts = {f: int(n * w[f] / total) for f in families}
    for f in families[: n - sum(counts.values())]:
        counts[f] += 1
    return counts


def campaign(args: argparse.Namespace) -> int:
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="simtrain-fuzz-")
    cases_log = open(out_dir / "cases.jsonl", "w")  # noqa: SIM115
    failures_log = open(out_dir / "failures.jsonl", "w")  # noqa: SIM115
    families = args.families.split(",") if args.families else list(MIX)
    counts = collections.Counter()
    per_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    exits: collections.Counter = collections.Counter()
    signatures: collections.Counter = collections.Counter()
    first_of: dict[str, tuple[str, fc.Case]] = {}
    rejected_valid: collections.Counter = collections.Counter()
    slowest: list[tuple[float, str, str]] = []
    longest_message = (0, "")
    t_start = time.monotonic()
    done = 0
    gen_s = 0.0
    stop = False

    def on_result(case_id: str, case: fc.Case, out: fc.Outcome) -> None:
        nonlocal done, longest_message
        done += 1
        exits[str(out.exit_code)] += 1
        per_family[case.family]["cases"] += 1
        slowest.append((out.seconds, case_id, case.mutation))
        slowest.sort(reverse=True)
        del slowest[10:]
        err_len = getattr(out, "stderr_len", len(out.stderr))
        if out.exit_code == 2 and err_len > longest_message[0]:
            longest_message = (err_len, case_id)
        if case.expect_valid and out.exit_code == 2 and not out.failures:
            rejected_valid[fc.message_key(out.stderr.strip())] += 1
        classes = sorted({c for c, _ in out.failures})
        for c, sig in out.failures:
            counts[c] += 1
            per_family[case.family][c] += 1
            key = f"{c} | {sig}"
            signatures[key] += 1
            first_of.setdefault(key, (case_id, case))
            folder = out_dir / "repro" / c / case_id
            fc.write_reproducer(case, folder, out)
            failures_log.write(json.dumps({
                "id": case_id, "family": case.family, "class": c, "signature": sig,
                "exit": out.exit_code, "seconds": round(out.seconds, 3),
                "mutation": case.mutation, "command": case.command_line()[:500],
                "exception": out.exception[:300], "stderr": out.stderr[:300],
                "repro": str(folder.relative_to(out_dir)),
            }) + "\n")  # fmt: skip
        if not out.failures:
            counts["ok"] += 1
        cases_log.write(json.dumps({
            "id": case_id, "family": case.family, "exit": out.exit_code,
            "seconds": round(out.seconds, 4), "classes": classes, "valid": case.expect_valid,
            "mutation": case.mutation[:80],
        }) + "\n")  # fmt: skip
        if done % args.progress == 0:
            rate = done / (time.monotonic() - t_start)
            bad = {k: v for k, v in counts.items() if k != "ok"}
            print(f"[{done}/{args.cases}] {rate:.1f} cases/s  failures {dict(bad)}",
                  file=sys.stderr, flush=True)  # fmt: skip

    pool = Pool(args.workers, scratch, args.limit_s, args.grace_s)
    try:
        chunk = 0
        while done < args.cases and not stop:
            n = min(CHUNK, args.cases - done)
            t0 = time.monotonic()
            jobs: list[tuple[str, fc.Case]] = []
            size = "big" if chunk % 4 == 3 else "normal"  # a quarter: larger layouts
            for fam, k in _family_counts(n, families).items():
                seed = zlib.crc32(f"{args.seed}/{chunk}".encode())
                cases = fc.generate_cases(fam, k, seed, valid_pct=args.valid_pct, size=size)
                jobs += [(f"{chunk:04d}-{fam}-{j:03d}", c) for j, c in enumerate(cases)]
            gen_s += time.monotonic() - t0
            jobs.sort(key=lambda j: zlib.crc32(j[0].encode()))  # mix the families
            try:
                pool.run(jobs, on_result)
            except KeyboardInterrupt:  # Ctrl-C: stop, keep what ran, write the summary
                stop = True
            chunk += 1
    finally:
        pool.close()
        cases_log.close()
        failures_log.close()
    wall = time.monotonic() - t_start

    minimal: dict[str, str] = {}
    if args.minimize_first:
        for key, (_case_id, case) in sorted(first_of.items()):
            if key.startswith(("timeout", "crash")):
                continue  # each run takes the whole time limit
            small = minimize(case, Path(scratch) / "min", args.limit_s)
            folder = out_dir / "minimal" / re.sub(r"[^\w.-]+", "_", key)[:100]
            fc.write_reproducer(small, folder)
            minimal[key] = describe_case(small)

    summary = {
        "cases": done, "seed": args.seed, "workers": args.workers, "wall_s": round(wall, 1),
        "generation_s": round(gen_s, 1), "limit_s": args.limit_s,
        "failures": {k: v for k, v in counts.items() if k != "ok"}, "ok": counts["ok"],
        "exits": dict(exits), "per_family": {f: dict(c) for f, c in per_family.items()},
        "signatures": dict(signatures.most_common()),
        "first_case_of_signature": {k: v[0] for k, v in first_of.items()},
        "minimal": minimal, "slowest": [list(s) for s in slowest],
        "longest_exit2_message": {"chars": longest_message[0], "case": longest_message[1]},
        "drawn_valid_but_rejected": dict(rejected_valid.most_common()),
    }  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return 1 if summary["failures"] else 0


def print_summary(s: dict[str, Any]) -> None:
    classes = ("traceback", "timeout", "long_message", "bad_message", "bad_exit", "invariant",
               "crash")  # fmt: skip
    print(f"\n{s['cases']:,} cases in {s['wall_s']:,.0f} s ({s['workers']} workers, "
          f"generation {s['generation_s']:,.0f} s), seed {s['seed']}, limit {s['limit_s']:g} s")  # fmt: skip
    print("failures: " + ", ".join(f"{c} {s['failures'].get(c, 0)}" for c in classes))
    print("exits: " + ", ".join(f"{k}: {v}" for k, v in sorted(s["exits"].items())))
    print(f"\n{'command':<12}{'cases':>7}" + "".join(f"{c[:10]:>11}" for c in classes))
    for fam, c in sorted(s["per_family"].items()):
        print(f"{fam:<12}{c.get('cases', 0):>7}" + "".join(f"{c.get(k, 0):>11}" for k in classes))
    print("\nsignatures (count | class | signature):")
    for k, v in s["signatures"].items():
        print(f"{v:>6}  {k}")
    print(f"\nlongest exit-2 message: {s['longest_exit2_message']['chars']:,} chars "
          f"({s['longest_exit2_message']['case']})")  # fmt: skip
    print("slowest: " + ", ".join(f"{t:.1f} s {cid}" for t, cid, _ in s["slowest"][:5]))
    if s["drawn_valid_but_rejected"]:
        print("\ndrawn valid, rejected with exit 2 (not failures; worth a look):")
        for k, v in list(s["drawn_valid_but_rejected"].items())[:15]:
            print(f"{v:>6}  {k}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="fuzz-out", help="folder for the summary and reproducers")
    ap.add_argument("--families", default="", help="comma-separated subset of: " + ", ".join(MIX))
    ap.add_argument("--valid-pct", type=float, default=0.4, help="share drawn valid [0.4]")
    ap.add_argument("--limit-s", type=float, default=TIME_LIMIT_S, help="per-case limit")
    ap.add_argument("--grace-s", type=float, default=20.0,
                    help="after the limit, faulthandler ends a worker stuck in C code")  # fmt: skip
    ap.add_argument("--progress", type=int, default=500, help="a progress line every N cases")
    ap.add_argument("--no-minimize", dest="minimize_first", action="store_false",
                    help="do not minimise the first case of each signature")  # fmt: skip
    ap.add_argument("--replay", metavar="CASE_JSON", help="run one case.json and print it")
    ap.add_argument("--minimize", metavar="CASE_JSON", help="minimise one case.json")
    args = ap.parse_args(argv)
    if args.replay or args.minimize:
        case = fc.Case.from_json(json.loads(Path(args.replay or args.minimize).read_text()))
        scratch = Path(tempfile.mkdtemp(prefix="simtrain-fuzz-"))
        if args.minimize:
            case = minimize(case, scratch, args.limit_s)
        out = fc.run_case(case, scratch / "replay", timing(args.limit_s))
        print(describe_case(case))
        print(out.describe())
        return 1 if out.failures else 0
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())
