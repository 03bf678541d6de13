"""The exceptions that cross module boundaries.

    ClusterChatError
     ├── Unavailable          a backend (SQL store, Redis) cannot be reached now
     │    └── Busy            this node has more work queued than it takes on
     └── Refused              a request that is well-formed but not allowed
          ├── NameTaken
          ├── GroupNameTaken
          ├── NoSuchUser
          ├── NoSuchGroup
          ├── AlreadyFriends
          ├── AlreadyMember
          ├── GroupFull
          ├── MailboxFull     the receiver has as much stored as they may
          └── OverQuota       this user has as many groups/friends as they may

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


class MailboxFull(Refused):
    pass


class OverQuota(Refused):
    pass
