"""Slow salted password hashes (argon2id), computed off the event loop.

Hashing has its own pool of one thread per core and a bounded queue in
front of it: in a login storm the first few hundred wait their turn (each
knows its wait is bounded) and the rest are told at once that the server is
busy, instead of every login timing out behind an ever longer queue.

Checks waiting for a thread are served one client address at a time in
turn, not first come first served: an address with 30 logins queued (its
own accounts logging in and out, never a failure, every one a full hash)
made everyone's login wait behind all 30; now another address's waits for
the checks running and at most one of each other address waiting. A thread
that finishes a check takes the next itself (:class:`FairPool`), so the
threads never wait for the event loop between checks.

Registrations hash on a pool and queue of their own, half as many threads:
a registration flood fills its own queue and is told "busy" while password
logins keep their threads (at worst they share the cores two to one).
Ticket logins never hash.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Histogram

from clusterchat import errors
from clusterchat.config import HashCost as HashCost  # re-exported: its home was here

T = TypeVar("T")

#: Prefix of a password the original system stored in plaintext (migration
#: 0001 marks them); the login that proves one replaces it with a hash.
PLAIN = "plain$"


def is_plain(stored: str) -> bool:
    return stored.startswith(PLAIN)


class Passwords:
    def __init__(self, cost: HashCost | None = None, queue: int = 64, reg_queue: int = 64) -> None:
        self.cost = cost = cost if cost is not None else HashCost()
        self._hasher = PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_kib,
            parallelism=cost.parallelism,
            type=Type.ID,
        )
        threads = os.cpu_count() or 1
        self._pool = FairPool(threads, "argon2")
        self._capacity = threads + max(0, queue) if queue else 1 << 30
        self._pending = 0
        self.seconds = Histogram(
            "clusterchat_password_hash_seconds",
            "Time one argon2id hash or check takes on its thread",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=None,
        )
        reg_threads = max(1, threads // 2)
        self._reg_pool = ThreadPoolExecutor(reg_threads, thread_name_prefix="argon2-reg")
        self._reg_capacity = reg_threads + max(0, reg_queue) if reg_queue else 1 << 30
        self._reg_pending = 0
        # Verified against when the user does not exist, so timing does not tell.
        self._dummy = self._hasher.hash("clusterchat-no-such-user")

    @property
    def share(self) -> int:
        """Password checks one client address may have in flight: half the
        pool and its queue, so one address cannot fill the queue and have
        everyone else told "busy"."""
        return max(1, self._capacity // 2)

    @property
    def busy(self) -> bool:
        """Every thread is hashing and the queue is full."""
        return self._pending >= self._capacity

    async def hash(self, password: str) -> str:
        """For a registration, on the registrations' own pool."""
        if self._reg_pending >= self._reg_capacity:
            raise errors.Busy("too many registrations queued")
        self._reg_pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._reg_pool, self._timed, self._hasher.hash, password
            )
        finally:
            self._reg_pending -= 1

    async def verify(self, stored: str | None, password: str, by: Hashable = None) -> bool:
        """``by``: the client address asking; waiting checks take turns by it."""
        if self.busy:
            raise errors.Busy("too many password checks queued")
        self._pending += 1
        try:
            return await self._pool.run(by, self._timed, self._verify, stored, password)
        finally:
            self._pending -= 1

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds.observe(time.perf_counter() - start)

    @property
    def queued(self) -> int:
        """Checks waiting for or running on a hashing thread."""
        return self._pending

    def _verify(self, stored: str | None, password: str) -> bool:
        if stored is not None and is_plain(stored):
            given = password.encode()
            return hmac.compare_digest(stored[len(PLAIN) :].encode(), given)
        try:
            self._hasher.verify(stored or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored is not None

    def close(self) -> None:
        self._pool.close()
        self._reg_pool.shutdown(wait=False, cancel_futures=True)


class FairPool:
    """Threads that run waiting jobs one key (a client address) at a time in
    turn, oldest first within a key. A thread done with a job takes the next
    at once, as a ThreadPoolExecutor's does."""

    def __init__(self, threads: int, name: str) -> None:
        self._cond = threading.Condition()
        #: Jobs waiting, by key, in the order the keys take their turns.
        self._jobs: dict[Hashable, deque[_Job]] = {}
        self._closed = False
        for n in range(threads):
            threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True).start()

    async def run(self, key: Hashable, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        with self._cond:
            self._jobs.setdefault(key, deque()).append((loop, done, fn, args))
            self._cond.notify()
        return await done

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = next(iter(self._jobs))
                queue = self._jobs.pop(key)
                loop, done, fn, args = queue.popleft()
                if queue:
                    self._jobs[key] = queue  # to the back of the line
            if done.cancelled():  # its login went away while it waited
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the waiting coroutine
                loop.call_soon_threadsafe(_fail, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result)

    def close(self) -> None:
        """Stop the threads; checks still waiting are cancelled (as the
        executor's ``cancel_futures`` did), so no login awaits them forever."""
        with self._cond:
            self._closed = True
            waiting = [job for queue in self._jobs.values() for job in queue]
            self._jobs.clear()
            self._cond.notify_all()
        for loop, done, _, _ in waiting:
            if not loop.is_closed():
                loop.call_soon_threadsafe(done.cancel)


#: The loop to answer on, the future it waits on, and the call to make.
_Job = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[object, ...]
]


def _settle(done: asyncio.Future[Any], result: object) -> None:
    if not done.done():
        done.set_result(result)


def _fail(done: asyncio.Future[Any], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)
