"""Telling online users that something changed, on whatever node they are.

Chat messages travel the bus as the JSON their receiver reads. What else
this module sends through ``Bus.send`` starts with a byte JSON never does,
so the receiving node knows it is not a chat message:

- ``PUSH`` + a FRIEND_EVENT / GROUP_EVENT document: written to a modern
  session, dropped for an original (NUL) client, which must never see new
  reply types;
- ``BLOCKS`` + ``{"by": uid, "on": bool}``: the receiver's cached set of
  users who block them changed; nothing is written.

Neither is ever stored offline (a user who was away reads the new state in
their login reply and lists).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from clusterchat import errors
from clusterchat.protocol import codec, dialect
from clusterchat.protocol.messages import MsgId
from clusterchat.service.context import Service
from clusterchat.service.session import Session

log = logging.getLogger(__name__)

PUSH = b"\x01"
BLOCKS = b"\x02"
_JSON = ord("{")


def is_chat(payload: bytes) -> bool:
    """A payload that is a chat message (the only thing kept offline)."""
    return bool(payload) and payload[0] == _JSON and codec.is_chat(payload)


def _shown(s: Session) -> bool:
    """Events (FRIEND_ADDED, FRIEND_EVENT, GROUP_EVENT) are ours: the dialect
    filter keeps them from an original client."""
    return dialect.shown(s.legacy, MsgId.GROUP_EVENT)


async def send(svc: Service, uids: Iterable[int], payload: bytes) -> None:
    """Write ``payload`` (a PUSHED document, framed) to those of ``uids``
    online with a modern client; users offline are skipped."""
    away = []
    for uid in uids:
        s = svc.sessions.get(uid)
        if s is None:
            away.append(uid)
        elif _shown(s):
            s.deliver(payload)
    await _away(svc, away, PUSH + payload)


async def control(svc: Service, uid: int, kind: bytes, doc: dict[str, Any]) -> None:
    """A control message for one user's session, wherever it is."""
    payload = kind + codec.encode(doc)
    s = svc.sessions.get(uid)
    if s is not None:
        arrived(svc, s, payload)
    else:
        await _away(svc, [uid], payload)


async def _away(svc: Service, uids: list[int], payload: bytes) -> None:
    if uids and svc.bus.shared:
        try:
            await svc.bus.send(uids, payload)  # those offline come back: dropped
        except errors.Unavailable as exc:
            log.warning("could not tell %d users of a change: %s", len(uids), exc)


def arrived(svc: Service, s: Session, payload: bytes) -> bool:
    """One of ours reached a local session (``ChatService.deliver``)."""
    kind, body = payload[:1], payload[1:]
    if kind == PUSH:
        if _shown(s):
            s.deliver(body)
    elif kind == BLOCKS:
        doc = codec.loads(body)
        s.block_changed(int(doc["by"]), bool(doc["on"]))
    return True
