"""Session tickets: a login reply carries one, and a client that lost its
connection presents it to log in again without the password.

A ticket is 32 random bytes; the store keeps only its SHA-256, so a stolen
database does not yield usable tickets. A fresh ticket is issued at every
login, password or ticket (the one used stops working: a stolen copy is
dead once its owner reconnects), expires after ``--ticket-lifetime``
(28 days), and is revoked at logout. Checking one costs a hash, not an
argon2 run: a node restart's reconnect storm stays cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def issue() -> tuple[str, str]:
    """A new ticket and the digest to store."""
    ticket = secrets.token_urlsafe(32)
    return ticket, digest(ticket)


def digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def matches(ticket: str, stored: str | None) -> bool:
    return stored is not None and hmac.compare_digest(digest(ticket), stored)
