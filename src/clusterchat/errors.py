"""The exceptions that cross module boundaries.

    ClusterChatError
     ├── Unavailable          a backend (SQL store, Redis) cannot be reached now
     │    ├── Busy            this node has more work queued than it takes on
     │    └── InDoubt         a write was sent but its answer lost: it may have been done
     └── Refused              a request that is well-formed but not allowed
          ├── NameTaken
          ├── GroupNameTaken
          ├── NoSuchUser
          ├── NoSuchGroup
          ├── AlreadyFriends
          ├── AlreadyMember
          └── GroupFull

Driver exceptions (SQLAlchemy, redis) are translated into these at the
storage and bus boundaries; the service maps them to protocol error codes.
"""

from __future__ import annotations


class ClusterChatError(Exception):
    pass


class Unavailable(ClusterChatError):
    pass


class Busy(Unavailable):
    pass


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
