"""``klineflow cluster watch`` without processes: what the supervisor starts given what runs
(``jobs.cluster.Supervisor``), its backoff between failed starts, the thin loop around it
driven by fake looks at a cluster, and the command line's flags."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.retry import Backoff
from jobs import cli, cluster
from jobs.cluster import ClusterView, Repair, Stopper, Supervisor, missing_daemons
from jobs.cluster_settings import ClusterSettings, WatchSettings, watch_settings_from_args
from jobs.job import JobSetupError
from tests.unit.test_cli_defaults import ENV_NAME, _options

JM = 100
TM_A, TM_B, TM_C = 201, 202, 203
WHOLE = ClusterView(
    jobmanager=JM, taskmanagers=(TM_A, TM_B), resource_ids={TM_A: "tm-a", TM_B: "tm-b"},
    registered=2,
)  # fmt: skip
NO_JITTER = Backoff(base_s=2.0, cap_s=16.0, min_fraction=1.0)


def supervisor(wanted: int = 2, backoff: Backoff = NO_JITTER) -> Supervisor:
    return Supervisor(wanted, started_at=1_000.0, backoff=backoff)


# --- what to start ---------------------------------------------------------------------------


def test_a_cluster_with_its_shape_needs_nothing() -> None:
    watch = supervisor()
    assert watch.decide(WHOLE, now=0.0) is None
    assert watch.decide(WHOLE, now=5.0) is None


def test_more_taskmanagers_than_wanted_are_left_alone() -> None:
    three = ClusterView(jobmanager=JM, taskmanagers=(TM_A, TM_B, TM_C))
    assert missing_daemons(2, three) == (False, 0)
    assert supervisor().decide(three, now=0.0) is None


def test_a_dead_taskmanager_is_replaced_and_named() -> None:
    watch = supervisor()
    watch.decide(WHOLE, now=0.0)
    one_left = ClusterView(jobmanager=JM, taskmanagers=(TM_B,), resource_ids={TM_B: "tm-b"})
    repair = watch.decide(one_left, now=5.0)
    assert repair == Repair(start_taskmanagers=1, lost_taskmanagers=((TM_A, "tm-a"),))
    line = repair.describe(2, one_left)
    assert line == (
        f"1 of 2 TaskManager(s) running (taskmanager pid {TM_A} (resource id tm-a) died): "
        "starting 1 TaskManager(s)"
    )
    # The new one replaces the dead one; the cluster is whole again.
    assert watch.taskmanager_started(TM_C, "tm-c") == (TM_A, "tm-a")
    watch.succeeded()
    assert watch.decide(ClusterView(jobmanager=JM, taskmanagers=(TM_B, TM_C)), now=6.0) is None
    assert watch.repairs == 1


def test_a_dead_jobmanager_is_started_again_and_the_taskmanagers_left_alone() -> None:
    watch = supervisor()
    watch.decide(WHOLE, now=0.0)
    headless = ClusterView(jobmanager=None, taskmanagers=(TM_A, TM_B))
    repair = watch.decide(headless, now=5.0)
    assert repair == Repair(start_jobmanager=True, lost_jobmanager=JM)
    assert "the JobManager is not running (pid 100 died)" in repair.describe(2, headless)
    assert repair.describe(2, headless).endswith("starting the JobManager")
    assert watch.jobmanager_started(JM + 1) == JM


def test_nothing_running_starts_the_whole_cluster_without_naming_a_death() -> None:
    repair = supervisor(3).decide(ClusterView(), now=0.0)
    assert repair == Repair(start_jobmanager=True, start_taskmanagers=3)
    assert repair.describe(3, ClusterView()) == (
        "the JobManager is not running; 0 of 3 TaskManager(s) running: starting the "
        "JobManager and 3 TaskManager(s)"
    )


def test_two_deaths_between_looks_are_both_replaced_in_order() -> None:
    watch = supervisor(3)
    watch.decide(ClusterView(jobmanager=JM, taskmanagers=(TM_A, TM_B, TM_C),
                             resource_ids={TM_A: "a", TM_B: "b", TM_C: "c"}), now=0.0)  # fmt: skip
    repair = watch.decide(ClusterView(jobmanager=JM, taskmanagers=(TM_B,)), now=5.0)
    assert repair is not None and repair.start_taskmanagers == 2
    assert repair.lost_taskmanagers == ((TM_A, "a"), (TM_C, "c"))
    assert watch.taskmanager_started(301, "n1") == (TM_A, "a")
    assert watch.taskmanager_started(302, "n2") == (TM_C, "c")
    assert watch.taskmanager_started(303, "n3") is None  # nothing left to replace


def test_a_resource_id_seen_once_is_kept_for_naming_the_death() -> None:
    """A TaskManager's log names its resource id a moment after it starts; the name
    learnt at one look names it at a later death, when the next look no longer has it."""
    watch = supervisor()
    watch.decide(WHOLE, now=0.0)
    watch.decide(ClusterView(jobmanager=JM, taskmanagers=(TM_A, TM_B)), now=1.0)  # no names
    repair = watch.decide(ClusterView(jobmanager=JM, taskmanagers=(TM_A,)), now=2.0)
    assert repair is not None and repair.lost_taskmanagers == ((TM_B, "tm-b"),)


# --- backoff between failed starts -----------------------------------------------------------


def test_failed_starts_back_off_with_the_shared_backoff_and_reset_once_whole() -> None:
    watch = supervisor()
    watch.decide(WHOLE, now=0.0)
    one_left = ClusterView(jobmanager=JM, taskmanagers=(TM_B,))
    assert watch.decide(one_left, now=10.0) is not None
    assert watch.failed(now=10.0) == 2.0  # NO_JITTER: the ceilings 2, 4, 8, 16, 16
    assert watch.decide(one_left, now=11.9) is None  # still backing off
    assert watch.next_look_in(now=11.0, interval_s=5.0) == pytest.approx(1.0)
    repair = watch.decide(one_left, now=12.0)
    assert repair is not None and repair.lost_taskmanagers == ((TM_A, "tm-a"),)  # still named
    assert [watch.failed(now=12.0) for _ in range(4)] == [4.0, 8.0, 16.0, 16.0]
    assert watch.next_look_in(now=12.0, interval_s=5.0) == 5.0  # looks go on meanwhile
    # Someone else brought it back (`cluster up` by hand): the failures are forgotten.
    assert watch.decide(WHOLE, now=13.0) is None
    assert watch.failures == 0
    assert watch.decide(one_left, now=14.0) is not None


def test_the_backoff_draws_its_jitter_from_the_shared_backoff() -> None:
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return low

    watch = Supervisor(2, started_at=0.0, backoff=Backoff(1.0, 60.0, min_fraction=0.5),
                       uniform=uniform)  # fmt: skip
    assert [watch.failed(now=0.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert draws == [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0)]


def test_only_a_cluster_down_after_the_watch_began_ends_it() -> None:
    watch = supervisor()
    assert not watch.ended_by_down(ClusterView(down_requested_at=None))
    assert not watch.ended_by_down(ClusterView(down_requested_at=999.0))  # an old `down`
    assert watch.ended_by_down(ClusterView(down_requested_at=1_000.5))


# --- the stop request ------------------------------------------------------------------------


def test_sigterm_sets_the_stopper_and_the_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Stopper().handling() as stopper:
        assert not stopper.stopped
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.stopped and stopper.signal == signal.SIGTERM
        assert stopper.sleep(60.0) is False  # returns at once once stopped
    assert signal.getsignal(signal.SIGTERM) == before


# --- the loop, driven by fake looks ----------------------------------------------------------


class ScriptedStopper(Stopper):
    """Sleeps nothing but moves its clock (``now``) on; requests a stop once ``looks``
    sleeps have been asked for."""

    def __init__(self, looks: int) -> None:
        super().__init__()
        self.looks = looks
        self.slept: list[float] = []
        self.time = 0.0

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float, step_s: float = 0.2) -> bool:
        self.slept.append(round(seconds, 3))
        self.time += seconds
        if len(self.slept) >= self.looks:
            self.request(signal.SIGTERM)
        return not self.stopped


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, list]]:
    """``jobs.cluster`` with its looks and starts replaced: ``views`` are returned by
    ``observe`` in turn (the last one again), ``starts`` records each start, ``fail`` makes
    that many TaskManager starts fail first."""
    state: dict[str, list] = {"views": [], "starts": [], "fail": []}

    def observe(_cluster: ClusterSettings) -> ClusterView:
        views = state["views"]
        return views.pop(0) if len(views) > 1 else views[0]

    def start_taskmanager(_cluster: ClusterSettings, **_: object) -> tuple[int, str, list]:
        state["starts"].append("taskmanager")
        if state["fail"]:
            state["fail"].pop()
            raise JobSetupError("the new TaskManager (pid 9) did not register within 1s")
        return TM_C, "tm-c", [{"id": "tm-b", "slotsNumber": 7}, {"id": "tm-c", "slotsNumber": 7}]

    def start_jobmanager(_cluster: ClusterSettings, **_: object) -> int:
        state["starts"].append("jobmanager")
        return JM + 1

    monkeypatch.setattr(cluster, "observe", observe)
    monkeypatch.setattr(cluster, "start_taskmanager", start_taskmanager)
    monkeypatch.setattr(cluster, "start_jobmanager", start_jobmanager)
    yield state


def test_the_loop_replaces_a_dead_taskmanager_logs_it_and_stops_on_sigterm(
    fake_cluster: dict[str, list], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    one_left = ClusterView(jobmanager=JM, taskmanagers=(TM_B,), resource_ids={TM_B: "tm-b"})
    healed = ClusterView(jobmanager=JM, taskmanagers=(TM_B, TM_C))
    fake_cluster["views"] = [WHOLE, one_left, healed]
    stopper = ScriptedStopper(looks=3)
    settings = ClusterSettings(home=tmp_path, taskmanagers=2)
    with caplog.at_level(logging.INFO, logger="jobs.cluster"):
        result = cluster.watch_cluster(settings, WatchSettings(interval_s=5.0), stopper,
                                       clock=stopper.now)  # fmt: skip
    assert fake_cluster["starts"] == ["taskmanager"]
    assert stopper.slept == [5.0, 5.0, 5.0]
    messages = [record.getMessage() for record in caplog.records]
    assert f"taskmanager pid {TM_A} (resource id tm-a) died" in messages[1]
    (started,) = [m for m in messages if m.startswith("started taskmanager")]
    assert started.startswith(f"started taskmanager pid {TM_C} (resource id tm-c), registered")
    assert f"it replaces taskmanager pid {TM_A} (resource id tm-a), which died" in started
    assert started.endswith("2 of 2 TaskManager(s) registered (14 slots)")
    assert result.startswith("watch stopped (SIGTERM) after starting 1 daemon(s)")


def test_the_loop_backs_off_after_a_failed_start_then_succeeds(
    fake_cluster: dict[str, list], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    one_left = ClusterView(jobmanager=JM, taskmanagers=(TM_B,))
    fake_cluster["views"] = [one_left, one_left, ClusterView(jobmanager=JM, taskmanagers=(2, 3))]
    fake_cluster["fail"] = [True]
    stopper = ScriptedStopper(looks=3)
    backoff = Backoff(base_s=2.0, cap_s=60.0, min_fraction=1.0)
    with caplog.at_level(logging.INFO, logger="jobs.cluster"):
        cluster.watch_cluster(ClusterSettings(home=tmp_path, taskmanagers=2),
                              WatchSettings(interval_s=5.0), stopper, backoff=backoff,
                              clock=stopper.now)  # fmt: skip
    assert fake_cluster["starts"] == ["taskmanager", "taskmanager"]
    assert stopper.slept == [2.0, 5.0, 5.0]  # the backoff, not the interval, then whole
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "(attempt 1): the new TaskManager (pid 9) did not" in errors[0]
    assert "next attempt in 2.0 s" in errors[0]
    retries = [r.getMessage() for r in caplog.records if "(attempt 2)" in r.getMessage()]
    assert len(retries) == 1


def test_the_loop_brings_a_jobmanager_back(
    fake_cluster: dict[str, list], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fake_cluster["views"] = [WHOLE, ClusterView(taskmanagers=(TM_A, TM_B)), WHOLE]
    with caplog.at_level(logging.INFO, logger="jobs.cluster"):
        cluster.watch_cluster(ClusterSettings(home=tmp_path, taskmanagers=2), WatchSettings(),
                              ScriptedStopper(looks=3))  # fmt: skip
    assert fake_cluster["starts"] == ["jobmanager"]
    assert any(
        r.getMessage().startswith(f"started the JobManager: pid {JM + 1}")
        and f"it replaces pid {JM}, which died" in r.getMessage()
        for r in caplog.records
    )


def test_a_cluster_down_ends_the_loop(fake_cluster: dict[str, list], tmp_path: Path) -> None:
    fake_cluster["views"] = [WHOLE, ClusterView(down_requested_at=4e9)]
    result = cluster.watch_cluster(ClusterSettings(home=tmp_path, taskmanagers=2),
                                   WatchSettings(), ScriptedStopper(looks=10))  # fmt: skip
    assert result.startswith("`cluster down` ran")
    assert fake_cluster["starts"] == []


# --- command line ----------------------------------------------------------------------------


def _cluster_parser(monkeypatch: pytest.MonkeyPatch) -> object:
    for name in ("KLINEFLOW_WATCH_INTERVAL_S", "KLINEFLOW_WATCH_START_TIMEOUT_S",
                 "KLINEFLOW_CLUSTER_WATCH", "KLINEFLOW_TASKMANAGERS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return cli.build_parser()


def test_watch_flags_default_to_the_watch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = _cluster_parser(monkeypatch)
    args = parser.parse_args(["cluster", "watch"])  # type: ignore[attr-defined]
    assert args.action == "watch" and args.watch is False
    assert watch_settings_from_args(args) == WatchSettings()


def test_watch_flags_fall_back_to_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLINEFLOW_WATCH_INTERVAL_S", "2.5")
    monkeypatch.setenv("KLINEFLOW_WATCH_START_TIMEOUT_S", "30")
    monkeypatch.setenv("KLINEFLOW_CLUSTER_WATCH", "1")
    args = cli.build_parser().parse_args(["cluster", "up", "--taskmanagers", "3"])
    assert watch_settings_from_args(args) == WatchSettings(interval_s=2.5, start_timeout_s=30.0)
    assert args.watch is True and args.taskmanagers == 3
    flagged = cli.build_parser().parse_args(["cluster", "watch", "--interval-s", "1"])
    assert watch_settings_from_args(flagged).interval_s == 1.0


def test_every_cluster_command_flag_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    options = _options(commands.choices["cluster"])  # type: ignore[index]
    names = {action.dest: ENV_NAME.findall(action.help or "") for action in options}
    assert all(len(found) == 1 for found in names.values()), names
    assert names["interval_s"] == ["KLINEFLOW_WATCH_INTERVAL_S"]
    assert names["start_timeout_s"] == ["KLINEFLOW_WATCH_START_TIMEOUT_S"]
    assert names["watch"] == ["KLINEFLOW_CLUSTER_WATCH"]


def test_nonsense_watch_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        WatchSettings(interval_s=0)
    with pytest.raises(ValueError, match="start_timeout_s"):
        WatchSettings(start_timeout_s=-1)


def test_watch_goes_with_up_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _cluster_parser(monkeypatch)
    assert cli.main(["cluster", "down", "--watch", "--home", str(tmp_path)]) == 2
    assert "--watch goes with `up` only" in capsys.readouterr().err


def test_up_with_watch_runs_up_then_the_watch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _cluster_parser(monkeypatch)
    calls: list[str] = []
    monkeypatch.setattr(cluster, "cluster_up", lambda settings: calls.append("up") or "up ok")

    def watch(settings: ClusterSettings, watch: WatchSettings, stopper: Stopper) -> str:
        calls.append(f"watch {settings.taskmanagers} every {watch.interval_s}")
        assert signal.getsignal(signal.SIGTERM) == stopper.request  # SIGTERM ends it cleanly
        return "watch stopped"

    monkeypatch.setattr(cluster, "watch_cluster", watch)
    argv = ["cluster", "up", "--watch", "--home", str(tmp_path), "--taskmanagers", "2",
            "--interval-s", "3"]  # fmt: skip
    assert cli.main(argv) == 0
    assert calls == ["up", "watch 2 every 3.0"]
    assert "up ok" in capsys.readouterr().out
