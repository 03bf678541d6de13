"""The exceptions that cross module boundaries.

    ClusterChatError
     ├── Unavailable          a backend (SQL store, Redis) cannot be reached now
     │    ├── Busy            this node has more work queued than it takes on
     │    └── InDoubt         a write was sent but its answer lost: it may have been done
     ├── SchemaMismatch       the database's schema is not the one this code needs
     └── Refused              a request that is well-formed but not allowed
          ├── NameTaken
          ├── GroupNameTaken
          ├── NoSuchUser
          ├── NoSuchGroup
          ├── AlreadyFriends
          ├── AlreadyMember
          ├── GroupFull
          ├── NotFriends
          ├── RefusedByUser   the user does not take this from you (no reason given)
          ├── SelfTarget      not something one does to oneself (text says what)
          ├── NotMember       you are not a member of the group
          ├── NotInGroup      the user acted on is not a member
          ├── InGroup         the user invited is a member already
          ├── InviteOnly      the group takes members by invitation only
          ├── NotAllowed      your role in the group does not permit it
          ├── Banned           `clusterchat admin ban`
          ├── MailboxFull     the receiver has as much stored as they may
          │    └── MailboxShareFull  ... from this sender as one sender may leave
          └── OverQuota       this user has as many groups/friends as they may

Driver exceptions (SQLAlchemy, redis) are translated into these at the
storage and bus boundaries; the service maps them to protocol error codes.
"""

from __future__ import annotations


class ClusterChatError(Exception):
    pass


class Unavailable(ClusterChatError):
    @classmethod
    def of(cls, what: str, exc: BaseException) -> Unavailable:
        """``what`` unavailable, in the driver's own words (SQLAlchemy keeps
        them in ``orig``): a lock wait timeout and a lost connection must not
        read alike in the log."""
        words = str(getattr(exc, "orig", None) or exc)[:300]
        text = f"{what} unavailable: {exc.__class__.__name__}"
        return cls(f"{text}: {words}" if words else text)


class Busy(Unavailable):
    pass


class SchemaMismatch(ClusterChatError):
    """The message says which command to run."""


class InDoubt(Unavailable):
    """The commit of a write went out but its answer never came back (the
    connection to the store dropped): it may or may not have taken effect.
    Retried by background work like any outage (at least once); a request
    must not be answered as refused after it (see service/in_doubt.py)."""


class Refused(ClusterChatError):
    pass


class NameTaken(Refused):
    pass


class GroupNameTaken(Refused):
    pass


class NoSuchUser(Refused):
    pass


class NoSuchGroup(Refused):
    pass


class AlreadyFriends(Refused):
    pass


class AlreadyMember(Refused):
    pass


class GroupFull(Refused):
    pass


class NotFriends(Refused):
    pass


class NotInGroup(Refused):
    """Args: the user, the group."""


class NotAllowed(Refused):
    """Args: a sentence saying what is not allowed."""


class RefusedByUser(Refused):
    pass


class SelfTarget(Refused):
    """Args: a sentence saying what to do instead."""


class NotMember(Refused):
    pass


class InGroup(Refused):
    """Args: the user, the group."""


class InviteOnly(Refused):
    pass


class Banned(Refused):
    pass


class MailboxFull(Refused):
    pass


class MailboxShareFull(MailboxFull):
    """The sender has as much waiting for this receiver as one sender may
    (``--offline-share``); others can still leave them messages."""


class OverQuota(Refused):
    pass
