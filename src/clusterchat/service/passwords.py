"""Slow salted password hashes (argon2id), computed off the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError


@dataclass(frozen=True, slots=True)
class HashCost:
    """argon2id cost; the default is OWASP's recommended minimum."""

    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1


class Passwords:
    def __init__(self, cost: HashCost = HashCost()) -> None:
        self.cost = cost
        self._hasher = PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_kib,
            parallelism=cost.parallelism,
            type=Type.ID,
        )
        # Verified against when the user does not exist, so timing does not tell.
        self._dummy = self._hasher.hash("clusterchat-no-such-user")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            self._hasher.verify(stored or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored is not None
