"""The fault suite: the live flow under faults, on an embedded stack this module owns.

One stack (NATS, Redis, PostgreSQL started by ``linkpulse up``'s code in a
temporary state folder, never the machine's services), one ``linkpulse run
dataflow`` subprocess and one seeded publisher are shared by the faults, which
run in order. Events (and some bad messages) flow throughout; after each
fault the publisher pauses and the store must hold exactly what was sent so
far (``tests.fault_stack.check_store``): every valid event once, every closed
window equal to the brute force over the sent events, every dead letter once.
The flow must stay alive, except where the fault is its own death (it, its
reader or its writer process killed): then the test restarts it. Each fault
prints its recovery time (printed, never asserted).

Set ``LINKPULSE_FAULT_SEED`` to replay a run's random choices (the seed is printed).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from linkpulse.store.migrate import migrate
from tests.fault_stack import (
    FLOW_METRICS,
    READER_MODULE,
    WRITER_MODULE,
    FaultStack,
    Flow,
    Publisher,
    StoreCheck,
    alive_pids,
    brute_force_windows,
    check_store,
    dead_letter_stream_count,
    event_clock_start,
    stored_count,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_PREFIX = "lpfault:"
LIVE_KEY = f"{REDIS_PREFIX}latest:t0|orders||1m"  # a series the publisher always feeds


class Rig:
    """The shared stack, flow and publisher, and the steps every fault repeats."""

    def __init__(self, stack: FaultStack, flow: Flow, pub: Publisher, seed: int) -> None:
        self.stack = stack
        self.flow = flow
        self.pub = pub
        self.seed = seed
        self.rng = random.Random(f"faults-{seed}")  # apart from the publisher's
        self.say: Callable[[str], None] = print

    def ensure_flow(self) -> None:
        """Start the flow if an earlier fault left it dead (that fault has failed already)."""
        if not self.flow.alive():
            self.say("  (flow was not running at the start of this fault; restarting it)")
            self.flow.start()
        self.pub.resume()

    def traffic(self, low: float = 1.5, high: float = 3.0) -> None:
        """Let events flow for a seeded while."""
        time.sleep(self.rng.uniform(low, high))
        self.pub.raise_error()

    def recovery(self, fault: str, since: float, timeout: float = 120) -> str | None:
        """Print how long after ``since`` the store held every event sent by then."""
        target = self.pub.valid_count
        dsn = self.stack.dsn
        took = wait_for(
            lambda: stored_count(dsn) >= target or not self.flow.alive(), timeout, poll_s=0.05
        )
        if not self.flow.alive():
            self.say(f"  {fault}: the flow exited before the store caught up")
            problem = f"{fault}: the flow exited before the store caught up: {self.flow.log_tail()}"
            self.flow.start()  # so that the checks below and the next faults still run
            return problem
        if took is None:
            self.say(f"  {fault}: NOT recovered {timeout:.0f}s after the fault ended")
            return (
                f"{fault}: the {target} events sent by the end of the fault were not all "
                f"stored within {timeout:.0f}s"
            )
        total = time.monotonic() - since
        self.say(f"  {fault}: recovered {total:.2f}s after the fault ended (store caught up)")
        return None

    def settle(
        self, fault: str, *, timeout: float = 90, due_until: float | None = None
    ) -> tuple[StoreCheck, float | None]:
        """Pause the publisher, wait until the store holds exactly what was sent, resume.

        Returns the check and the seconds until it held (``None``: it did not).
        """
        self.pub.pause()
        sent, bad = self.pub.snapshot()
        dsn = self.stack.dsn
        last: list[StoreCheck] = []
        spent = [0.0]

        settings = self.stack.settings()

        def full() -> bool:
            began = time.monotonic()
            try:
                res = check_store(dsn, sent, bad, due_until=due_until)
                # ... and each dead letter once on the durable dead-letter stream too.
                on_stream = asyncio.run(dead_letter_stream_count(settings))
                if on_stream != len(bad):
                    res.problems.append(
                        f"dead-letter stream: {on_stream} messages for {len(bad)} bad sent"
                    )
                last[:] = [res]
            except Exception as e:  # the store may still be coming back
                last[:] = [StoreCheck(problems=[f"store not readable: {e!r}"])]
            spent[0] = time.monotonic() - began
            return not last[0].problems

        paused = time.monotonic()
        all_stored: list[float] = []

        def holds() -> bool:
            # The full check only once the count is there: it takes a while itself.
            if stored_count(dsn) < len(sent):
                return False
            if not all_stored:
                all_stored.append(time.monotonic() - paused)
            return full()

        took = wait_for(lambda: holds() or not self.flow.alive(), timeout, poll_s=0.05)
        if not last or last[0].problems:
            full()  # say what is wrong
        res = last[0]
        verdict = f"held after {took:.2f}s" if not res.problems else "did NOT hold"
        stored = f"{all_stored[0]:.2f}s" if all_stored else "never"
        self.say(
            f"  {fault}: every event stored {stored} after the publisher paused; "
            f"store check {verdict}: "
            f"{res.events} events, {res.final_windows} final orders/gmv windows, "
            f"{res.dead_letters} dead letters (sent {len(sent)} valid, {len(bad)} bad); "
            f"publish retries so far {self.pub.publish_failures}; one check {spent[0]:.1f}s"
        )
        self.pub.resume()
        return res, took

    def verdict(self, fault: str, problems: list[str | None], res: StoreCheck) -> None:
        """Fail with everything that did not hold (each fault checks all, then asserts)."""
        found = [p for p in problems if p] + res.problems
        if not self.flow.alive():
            found.append(f"the flow is not running: {self.flow.log_tail()}")
        assert not found, f"{fault} (seed {self.seed}):\n- " + "\n- ".join(found)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    seed = int(os.environ.get("LINKPULSE_FAULT_SEED", random.randrange(2**32)))
    print(f"fault suite seed: {seed} (LINKPULSE_FAULT_SEED={seed} replays it)")
    # Outside pytest's 0700 tmp tree: PostgreSQL runs as another user when we are root.
    root = Path(tempfile.mkdtemp(prefix="lp-faults-"))
    stack = FaultStack(root / "stack")
    stack.root.mkdir()
    pub: Publisher | None = None
    flow: Flow | None = None
    try:
        stack.up()
        migrate(stack.dsn)
        settings = stack.settings()
        pub = Publisher(settings, seed, start=event_clock_start())
        pub.start()  # creates the streams before the flow looks for them
        # The flow's log and recovery store where pytest keeps them after the run.
        work = tmp_path_factory.mktemp("faults")
        print(f"flow log: {work / 'flow.log'}")
        flow = Flow(stack, work, REDIS_PREFIX)
        flow.start()
        flow.helper(WRITER_MODULE, timeout=90)  # started: its sinks are built
        yield Rig(stack, flow, pub, seed)
    finally:
        if pub is not None:
            pub.stop()
        if flow is not None:
            flow.stop()
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _say(rig: Rig, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The figures go to the terminal even when the test passes."""

    def say(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    rig.say = say
    say(f"\n  (fault suite seed {rig.seed}; LINKPULSE_FAULT_SEED={rig.seed} replays it)")
    rig.ensure_flow()
    yield


def _killed_helper(rig: Rig, module: str, what: str) -> None:
    """SIGKILL one of the flow's helper processes; the flow stops and is restarted,
    or it carries on by itself. Either way nothing is lost or doubled."""
    rig.traffic()
    helper = rig.flow.helper(module)
    helper.kill()
    problems: list[str | None] = []
    code = rig.flow.wait_exit(20)
    if code is not None:
        named = code != 0 and f"{what} of" in rig.flow.last_run_log()
        if not named:
            problems.append(
                f"the flow exited with code {code} without naming its {what}: {rig.flow.log_tail()}"
            )
        how = "naming it" if named else "WITHOUT naming it"
        rig.say(f"  {what} SIGKILLed: the flow stopped (exit {code}) {how}; restarting it")
        rig.flow.start()
    else:
        rig.say(f"  {what} SIGKILLed: the flow carried on by itself")
    problems.append(rig.recovery(f"{what} SIGKILL", time.monotonic()))
    res, _ = rig.settle(f"{what} SIGKILL")
    rig.verdict(f"SIGKILL of the {what}", problems, res)


def test_sigkill_dataflow(rig: Rig) -> None:
    rig.traffic()
    helpers = rig.flow.helpers()
    assert helpers, "the flow should have its reader and writer processes"
    rig.flow.kill()
    problems: list[str | None] = []
    if wait_for(lambda: not alive_pids(helpers), 20) is None:
        problems.append(f"helper processes outlived the killed flow: {alive_pids(helpers)}")
    rig.flow.start()
    problems.append(rig.recovery("flow SIGKILL", time.monotonic()))
    res, _ = rig.settle("flow SIGKILL")
    rig.verdict("SIGKILL of the dataflow", problems, res)


def test_sigkill_reader_process(rig: Rig) -> None:
    _killed_helper(rig, READER_MODULE, "reader")


def test_sigkill_writer_process(rig: Rig) -> None:
    _killed_helper(rig, WRITER_MODULE, "writer")


def test_nats_killed_and_restarted_on_the_same_port(rig: Rig) -> None:
    rig.traffic()
    rig.stack.kill("nats")
    time.sleep(rig.rng.uniform(1, 3))
    problems: list[str | None] = [rig.stack.restart("nats")]
    back = time.monotonic()
    problems.append(rig.recovery("NATS restart", back))
    res, _ = rig.settle("NATS restart")
    rig.verdict("NATS killed and restarted", problems, res)


def _outage(rig: Rig, service: str, seconds: float) -> list[str | None]:
    """Stop ``service`` for ``seconds`` (events flowing), restart it; the flow must live."""
    rig.traffic()
    outcome = rig.stack.stop(service)
    rig.pub.send_bad()  # a dead letter to write while it is down (issue 9, section 1.2)
    rig.say(f"  {service} {outcome}; down for {seconds:.0f}s")
    problems: list[str | None] = []
    died = wait_for(lambda: not rig.flow.alive(), seconds, poll_s=0.2)
    if died is not None:
        problems.append(
            f"the flow exited {died:.1f}s into the {service} outage: {rig.flow.log_tail()}"
        )
        time.sleep(max(0.0, seconds - died))
    problems.append(rig.stack.restart(service))
    rig.pub.send_bad()  # ... and one right after it is back
    back = time.monotonic()
    if not rig.flow.alive():
        if died is None:
            problems.append(f"the flow exited at the {service} restart: {rig.flow.log_tail()}")
        rig.flow.start()  # so that the checks below and the next faults still run
    problems.append(rig.recovery(f"{service} outage", back))
    return problems


def test_redis_down_for_10_seconds(rig: Rig) -> None:
    problems = _outage(rig, "redis", 10)
    client = redis.Redis.from_url(rig.stack.settings().redis_url)
    try:
        # Redis keeps nothing across a restart: the live value must come back.
        took = wait_for(lambda: bool(client.exists(LIVE_KEY)), 60, poll_s=0.1)
    finally:
        client.close()
    if took is not None:
        rig.say(f"  redis outage: a live value back in Redis {took:.2f}s after checking began")
    else:
        problems.append(f"no live value in Redis ({LIVE_KEY}) 60s after it came back")
    res, _ = rig.settle("redis outage")
    rig.verdict("Redis down for 10 s", problems, res)


def test_postgres_stopped_for_10_seconds(rig: Rig) -> None:
    problems = _outage(rig, "postgres", 10)
    res, _ = rig.settle("postgres outage")
    rig.verdict("PostgreSQL stopped for 10 s", problems, res)


def test_burst_then_silence(rig: Rig) -> None:
    """Once traffic stops, every event is stored and every due window closes."""
    rig.traffic()
    rig.pub.pause()
    n = 60_000
    took = rig.pub.burst(n, step_s=0.005)
    rig.say(f"  burst: {n} events published in {took:.2f}s, then silence")
    # The silence: settle() keeps the publisher paused while it waits.
    res, tail = rig.settle("burst + silence", timeout=60)
    if not res.problems:
        rig.say(f"  burst + silence: tail stored, due windows closed {tail:.2f}s after the burst")
    rig.verdict("a burst followed by silence", [], res)


def test_stream_idle_for_minutes_of_event_time(rig: Rig) -> None:
    """Quiet: windows close by the idle clock; then event time jumps 7 minutes ahead."""
    rig.traffic()
    rig.pub.pause()
    sent, _ = rig.pub.snapshot()
    newest = max(s.t for s in sent)
    # After `quiet` s without a newer event the watermark has moved on with the
    # stream's clock by quiet - idle_timeout (less the reader's idle-chunk
    # cadence, ~1.25 s), so the windows ending by then must close too. `quiet`
    # is long enough for that clock alone to pass the next pane boundary, where
    # windows end; the check waits for them (and prints when they closed).
    cfg = FLOW_METRICS
    assert cfg.idle_timeout_s is not None
    by_events = newest - cfg.allowed_lateness_s
    boundary = (math.floor(by_events / cfg.pane_s) + 1) * cfg.pane_s
    margin = 2.5
    quiet = boundary - by_events + cfg.idle_timeout_s + margin + 0.5
    due = by_events + (quiet - cfg.idle_timeout_s) - margin
    # What this checks: windows that only the idle clock closes (the events alone
    # move the watermark to newest - lateness).
    sizes = {spec.name: spec.size_s for spec in cfg.window_specs}
    idle_only = [k for k in brute_force_windows(sent) if by_events < k[4] + sizes[k[3]] <= due]
    assert idle_only, "no window ends in the idle clock's stretch: the check would be empty"
    res_idle, took = rig.settle("quiet stream (idle clock)", timeout=quiet + 30, due_until=due)
    if not res_idle.problems and took is not None:
        rig.say(
            f"  quiet stream: due windows closed {took:.1f}s into the quiet (due by {quiet:.1f}s) "
            f"({len(idle_only)} of them closed by the idle clock alone)"
        )
    rig.pub.pause()
    gap = 7 * 60.0
    rig.pub.jump(gap)
    rig.pub.resume()
    jumped = time.monotonic()
    rig.traffic(3, 4)  # over a minute of event time past the gap
    problem = rig.recovery("event time jump", jumped)
    res, _ = rig.settle("after a 7-minute gap in event time")
    rig.verdict("a stream idle for minutes of event time", [problem, *res_idle.problems], res)
