"""The login / offline-delivery race, without sockets or an event loop.

``World`` plays the chat service around one connection of one user exactly
as :mod:`clusterchat.service.chat` drives :class:`LoginRace`: every ``await``
of the service is a ``yield`` of a generator, so a test (or hypothesis)
decides which of the concurrent pieces of work runs next, and stores commit
in any order (MariaDB gives an id at insert, not at commit). The
invariants checked after every order of events:

- nothing accepted for the user is lost: each message ends written to the
  connection or in the offline table; nothing held is dropped on any way out;
- no live message is written between a login's start and its reply, so none
  overtakes the offline messages the reply carries;
- once everything has run, a user who is online has nothing left stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from clusterchat.service.login_race import LoginRace, Phase

PAGE = 3  # rows per read of the offline table
BUDGET = 2  # offline messages a login reply carries at most

Task = Iterator[None]


class LoginFailed(Exception):
    """The store failed while the login built its reply."""


@dataclass
class World:
    """One user, one connection, the offline table and the tasks in flight."""

    shared: bool = False  # other nodes exist (they may store without telling us yet)
    race: LoginRace[str] = field(default_factory=LoginRace)
    registered: bool = False  # in ChatService.sessions
    claimed: bool = False  # presence says the user is online here
    logging_in: list[LoginRace[str]] = field(default_factory=list)
    store: dict[int, str] = field(default_factory=dict)
    next_id: int = 1
    peer_open: bool = True
    written: list[str] = field(default_factory=list)  # what reached the connection
    accepted: set[str] = field(default_factory=set)  # every message the service took on
    awaiting_reply: bool = False
    busy: bool = False  # a login or logout request is being served
    fail_login: bool = False
    store_fails: int = 0  # the offline delivery's next store calls that fail
    tasks: list[Task] = field(default_factory=list)
    count: int = 0

    # -- the peer ------------------------------------------------------------------

    def write(self, item: str) -> bool:
        if not self.peer_open:
            return False
        assert not (item.startswith("m") and self.awaiting_reply), (
            f"{item} written before the login reply: {self.written}"
        )
        self.written.append(item)
        return True

    # -- the store -----------------------------------------------------------------

    def read_page(self) -> list[tuple[int, str]]:
        return sorted(self.store.items())[:PAGE]

    def storing(self, msgs: list[str], local: bool = True) -> Task:
        """Store messages (ids taken now, committed later), then tell the
        race: locally, or by a nudge that finds the user only once claimed."""
        ids = list(range(self.next_id, self.next_id + len(msgs)))
        self.next_id += len(msgs)
        yield
        self.store.update(zip(ids, msgs, strict=True))
        yield
        if local:
            self.noticed_store()
        elif self.claimed:  # another node's nudge: Redis says the user is here
            yield
            self.noticed_store()

    def noticed_store(self) -> None:
        """ChatService._noticed_store."""
        if self.registered:
            if self.race.stored():
                self.spawn(self.flush(self.race))
        else:
            for race in self.logging_in:
                race.stored()

    def keep(self, held: list[str]) -> None:
        if held:
            self.spawn(self.storing(held))

    # -- tasks ---------------------------------------------------------------------

    def spawn(self, task: Task) -> None:
        self.tasks.append(task)

    def step(self, i: int) -> None:
        task = self.tasks[i % len(self.tasks)]
        try:
            next(task)
        except StopIteration:
            self.tasks.remove(task)
        self.check()

    def drain(self) -> None:
        while self.tasks:
            self.step(0)

    # -- the service's login, delivery and ways out ----------------------------------

    def login(self, ticket: bool) -> Task:
        """ChatService._login with _admit, _authenticate and _claim."""
        self.busy = True
        try:
            yield from self._login(ticket)
        finally:
            self.busy = False

    def _login(self, ticket: bool) -> Task:
        race = self.race
        if self.registered or not race.login_started():
            return
        self.awaiting_reply = True
        self.logging_in.append(race)
        try:
            has_offline = False
            yield
            if ticket:
                has_offline = bool(self.store)  # store.resume's look
                yield
            yield  # presence.claim
            if self.claimed or not race.claimed():  # online elsewhere, or gone
                race.refused()
                self.awaiting_reply = False
                return
            self.claimed = self.registered = True
        finally:
            self.logging_in.remove(race)
        try:
            fits: list[tuple[int, str]] = []
            if ticket:
                race.reply_read(complete=not (has_offline or self.shared))
            else:
                yield
                rows = self.read_page()  # store.open_session
                yield
                fits = rows[:BUDGET]
                race.reply_read(complete=len(fits) == len(rows) and len(fits) < PAGE)
            yield  # presence.online for the reply
            if self.fail_login:
                raise LoginFailed
        except LoginFailed:
            self.keep(self.forget(closed=race.closed))
            self.claimed = False
            self.awaiting_reply = False
            return
        held = race.reply_sent()
        self.awaiting_reply = False
        sent = self.write("reply:" + ",".join(m for _, m in fits))
        for m in held:
            sent = self.write(m) and sent
        if not sent:
            self.keep(held)
            if self.registered and self.race is race:
                yield from self.leave(logout=False)
            return
        yield from self.flush(race, fits)

    def flush(self, race: LoginRace[str], written: list[tuple[int, str]] | None = None) -> Task:
        """ChatService._flush_offline: delete what was written, read, write."""
        written = written or []
        while True:
            yield
            if self.store_fails:  # the delete or the read fails: go on later
                self.store_fails -= 1
                if race.read_failed():
                    self.spawn(self.flush(race, written))
                return
            for i, _ in written:
                self.store.pop(i, None)
            written = []
            if not race.next_read():
                return
            yield
            rows = self.read_page()
            yield
            if not rows or self.race is not race:
                continue
            if not all([self.write(m) for _, m in rows]):
                race.flush_stopped()
                return
            written = rows
            race.page_written(full=len(rows) >= PAGE)

    def live(self) -> str:
        """A chat for the user from someone on this node (ChatService._one_chat)."""
        self.count += 1
        m = f"m{self.count}"
        self.accepted.add(m)
        race = self.race
        if self.registered:
            if race.held is not None:
                race.held.append(m)
                return m
            if self.write(m):
                return m
        self.spawn(self.storing([m]))
        return m

    def remote(self) -> str:
        """Another node, not knowing the user is here, stores a chat for them."""
        assert self.shared, "no other node"
        self.count += 1
        m = f"m{self.count}"
        self.accepted.add(m)
        self.spawn(self.storing([m], local=False))
        return m

    def forget(self, closed: bool) -> list[str]:
        """ChatService._forget."""
        self.registered = False
        held = self.race.ended(closed)
        if not closed:
            self.race = LoginRace[str]()
        return held

    def leave(self, logout: bool, held: list[str] | None = None) -> Task:
        """ChatService._leave."""
        self.keep([*(held or []), *self.forget(closed=not logout)])
        yield
        self.claimed = False

    def logout(self) -> Task:
        self.busy = True
        try:
            yield from self.leave(logout=True)
        finally:
            self.busy = False

    def disconnect(self) -> None:
        """ChatService.disconnected."""
        self.peer_open = False
        held = self.race.ended(closed=True)
        if self.registered:
            self.spawn(self.leave(logout=False, held=held))
        else:
            assert not held

    def displace(self) -> None:
        """ChatService.displaced: the user is another node's now."""
        if self.registered:
            self.keep(self.forget(closed=True))
            self.peer_open = False

    # -- invariants ----------------------------------------------------------------

    def check(self) -> None:
        race = self.race
        assert (race.held is not None) == (race.phase is Phase.REPLYING), race
        if self.registered:
            assert race.phase in (Phase.REPLYING, Phase.FLUSHING, Phase.ONLINE, Phase.CLOSED)

    def arrived(self) -> set[str]:
        got: set[str] = set()
        for item in self.written:
            if item.startswith("reply:"):
                got.update(m for m in item[6:].split(",") if m)
            else:
                got.add(item)
        return got

    def check_settled(self) -> None:
        """After every task has run."""
        assert not self.tasks
        lost = self.accepted - self.arrived() - set(self.store.values())
        assert not lost, f"lost {lost}; written {self.written}, stored {self.store}"
        if self.registered and self.peer_open:
            assert self.race.phase is Phase.ONLINE, self.race
            assert not self.store, f"left stored while online: {self.store}"


# -- the races found so far, replayed ---------------------------------------------------


def run(world: World, *tasks: Task) -> None:
    for t in tasks:
        world.spawn(t)


def steps(world: World, n: int, i: int = 0) -> None:
    for _ in range(n):
        world.step(i)


def test_a_store_noticed_while_the_login_reads_is_read_again() -> None:
    """git e42137f: a store committing after open_session's read set the
    recheck, and the login cleared it ("Login keeps a recheck asked for while
    it read the offline table"): arrivals up to 101 s late in the soak."""
    race = LoginRace[str]()
    assert race.login_started() and race.claimed()
    assert race.stored() is False  # the login in progress will look again
    race.reply_read(complete=True)  # what it read was all there was, then
    assert race.reply_sent() == []
    assert race.next_read() is True
    assert race.next_read() is False and race.phase is Phase.ONLINE


def test_a_store_noticed_before_the_claim_is_read_after_the_reply() -> None:
    """A ticket login reads (store.resume) before it is registered: a store
    noticed then (ChatService._logging_in) is read after the reply."""
    race = LoginRace[str]()
    race.login_started()
    assert race.stored() is False
    assert race.claimed()
    race.reply_read(complete=True)
    race.reply_sent()
    assert race.next_read() is True


def test_offline_rows_committing_out_of_order_are_all_delivered() -> None:
    """git 327b659 and tests/e2e/test_offline_order.py: a store takes the
    lower id but commits last; the higher one is delivered first; the late
    one must still be delivered (rows are deleted by id, read from the start)."""
    w = World()
    run(w, w.login(ticket=False))
    w.drain()
    assert w.race.phase is Phase.ONLINE
    late = w.storing(["late"], local=False)
    w.spawn(late)  # takes id 1
    run(w, w.storing(["early"]))  # takes id 2
    w.step(1)
    w.step(1)  # early commits
    w.step(1)  # and is noticed: a flush starts
    w.step(0)  # late commits now, lower id
    while len(w.tasks) > 1:
        w.step(1)  # the flush delivers "early"
    w.drain()  # late's nudge
    assert w.written[1:] == ["early", "late"]
    w.check_settled()


def test_live_messages_during_login_follow_the_offline_ones() -> None:
    """tests/service/test_nothing_lost.py: a message arriving while the
    login is replying is held and written after the reply."""
    w = World()
    w.store[w.next_id] = "offline"
    w.next_id += 1
    w.accepted.add("offline")
    run(w, w.login(ticket=False))
    while not w.registered:
        w.step(0)
    live = w.live()
    w.drain()
    assert w.written == ["reply:offline", live]
    w.check_settled()


@pytest.mark.parametrize("way_out", ["failed", "displaced", "disconnected"])
def test_what_is_held_when_the_login_ends_early_is_stored(way_out: str) -> None:
    """Held messages were dropped when the login failed or the session was
    displaced before its reply; now every way out hands them back."""
    w = World(fail_login=way_out == "failed")
    run(w, w.login(ticket=False))
    while not w.registered:
        w.step(0)
    held = w.live()
    if way_out == "displaced":
        w.displace()
    elif way_out == "disconnected":
        w.disconnect()
    w.drain()
    assert held in w.store.values()
    w.check_settled()


def test_a_connection_gone_during_authentication_claims_nothing() -> None:
    race = LoginRace[str]()
    race.login_started()
    assert race.ended(closed=True) == []
    assert race.claimed() is False
    assert race.stored() is False and race.phase is Phase.CLOSED


def test_one_offline_delivery_at_a_time() -> None:
    race = LoginRace[str]()
    race.login_started()
    race.claimed()
    race.reply_read(complete=True)
    race.reply_sent()
    assert race.next_read() is False  # ONLINE
    assert race.stored() is True  # start one
    assert race.stored() is False  # the running one reads again
    assert race.next_read() is True
    race.page_written(full=True)
    assert race.next_read() is True
    assert race.next_read() is False


def test_an_offline_delivery_the_store_failed_goes_on_later() -> None:
    """A failed read or delete used to end the delivery (after a login it
    even answered the login request a second time, with ERROR 150): what
    was stored stayed there until the next login."""
    w = World()
    w.store[w.next_id] = "s0"
    w.next_id += 1
    w.accepted.add("s0")
    w.store_fails = 2  # the login's delete of "s0", then its retry
    run(w, w.login(ticket=False))
    w.drain()
    assert w.written == ["reply:s0"]
    w.check_settled()
    run(w, w.storing(["later"]))
    w.store_fails = 1
    w.drain()
    assert w.written[-1] == "later"
    w.check_settled()


def test_a_second_login_on_a_logged_in_connection_is_not_started() -> None:
    race = LoginRace[str]()
    race.login_started()
    assert race.login_started() is False


# -- every interleaving of small scenarios, exhaustively ----------------------------------

Event = str  # one-shot: "live", "remote", "disconnect", "displace", "logout"


def _fire(w: World, event: Event) -> None:
    if event == "live":
        w.live()
    elif event == "remote":
        w.remote()
    elif event == "disconnect" and w.peer_open:
        w.disconnect()
    elif event == "displace":
        w.displace()
    elif event == "logout" and w.registered and not w.busy:
        w.spawn(w.logout())


def _replay(
    make: Callable[[], World], events: list[Event], schedule: list[int]
) -> tuple[World, list[int]]:
    """Run ``schedule`` (>= 0: step that task; < 0: fire that event) from a
    fresh world; returns the world and the choices open next."""
    w = make()
    fired: set[int] = set()
    for c in schedule:
        if c < 0:
            fired.add(-c - 1)
            _fire(w, events[-c - 1])
            w.check()
        else:
            w.step(c)
    return w, [*range(len(w.tasks)), *(-e - 1 for e in range(len(events)) if e not in fired)]


def explore(make: Callable[[], World], events: list[Event]) -> int:
    """Every interleaving of the world's tasks and the events; returns how many."""
    leaves, todo = 0, [list[int]()]
    while todo:
        schedule = todo.pop()
        w, choices = _replay(make, events, schedule)
        if not choices:
            w.check_settled()
            leaves += 1
            assert leaves < 200_000, "scenario too large to explore"
            continue
        todo.extend([*schedule, c] for c in choices)
    return leaves


def _world(ticket: bool, shared: bool, stored: int, fail: bool = False) -> Callable[[], World]:
    def make() -> World:
        w = World(shared=shared, fail_login=fail)
        for k in range(stored):
            w.store[w.next_id] = f"s{k}"
            w.accepted.add(f"s{k}")
            w.next_id += 1
        w.spawn(w.login(ticket))
        return w

    return make


@pytest.mark.parametrize("ticket", [False, True], ids=["password", "ticket"])
@pytest.mark.parametrize("stored", [0, 1, 3])
@pytest.mark.parametrize(
    ("shared", "store"),
    [(False, "live"), (True, "live"), (True, "remote")],
    ids=["alone", "cluster-live", "cluster-remote"],
)
def test_every_interleaving_of_a_login_with_a_store(
    ticket: bool, shared: bool, stored: int, store: Event
) -> None:
    """A login (reading 0, 1 or a full page of stored messages) against a
    message that is live-delivered or stored here, or stored by another
    node (only in a cluster), at every point of it."""
    assert explore(_world(ticket, shared, stored), [store])


@pytest.mark.parametrize("way_out", ["disconnect", "displace", "logout", "fail"])
@pytest.mark.parametrize("ticket", [False, True], ids=["password", "ticket"])
def test_every_interleaving_of_a_login_and_a_way_out(way_out: Event, ticket: bool) -> None:
    """Whatever point the session ends at, nothing held or stored is lost."""
    fail = way_out == "fail"
    events = ["live"] if fail else ["live", way_out]
    assert explore(_world(ticket, True, 1, fail=fail and not ticket), events)


# -- random longer histories ----------------------------------------------------------------


class LoginRaceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World(shared=True)

    @precondition(lambda self: not self.world.busy and self.world.peer_open)
    @rule(ticket=st.booleans(), fail=st.booleans())
    def login(self, ticket: bool, fail: bool) -> None:
        self.world.fail_login = fail and not ticket
        self.world.spawn(self.world.login(ticket))

    @precondition(lambda self: bool(self.world.tasks))
    @rule(i=st.integers(0, 7), n=st.integers(1, 4))
    def step(self, i: int, n: int) -> None:
        for _ in range(n):  # a task runs a few awaits at a time
            if self.world.tasks:
                self.world.step(i)

    @rule()
    def store_hiccup(self) -> None:
        self.world.store_fails += 1

    @rule()
    def live_message(self) -> None:
        self.world.live()

    @rule()
    def stored_by_another_node(self) -> None:
        self.world.remote()

    @precondition(lambda self: not self.world.busy and self.world.registered)
    @rule()
    def logout(self) -> None:
        self.world.spawn(self.world.logout())

    @precondition(lambda self: self.world.peer_open)
    @rule()
    def disconnect(self) -> None:
        self.world.disconnect()

    @rule()
    def displaced(self) -> None:
        self.world.displace()

    @invariant()
    def consistent(self) -> None:
        self.world.check()

    def teardown(self) -> None:
        self.world.drain()
        self.world.check_settled()


LoginRaceMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=40)
test_every_order_of_events = LoginRaceMachine.TestCase
