"""The store's frequent statements, built once with bound parameters.

Building a Core statement and computing its cache key costs more Python
than running it through the compiled cache; a login runs several of them,
so the hot ones are made here once and executed with a parameter dict.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    type_coerce,
    union_all,
    update,
)

from clusterchat.storage.tables import (
    allgroup,
    friend,
    groupuser,
    mailbox,
    mailboxshare,
    offlinebody,
    offlinemessage,
    user,
)

_uid = bindparam("uid", type_=Integer)

CREDENTIALS = select(user.c.name, user.c.password, user.c.ticket, user.c.banned).where(
    user.c.id == _uid
)

#: Ticket logins, many users per statement (a reconnect storm arrives at once);
#: stored messages follow in pages, for those who have any.
RESUME_MANY = select(
    user.c.id,
    user.c.name,
    user.c.ticket,
    user.c.ticketexpiry,
    (
        exists().where(offlinemessage.c.userid == user.c.id)
        | exists().where(offlinemessage.c.userid == -user.c.id)  # shared texts: see tables.py
    ).label("waiting"),
).where(user.c.id.in_(bindparam("uids", expanding=True)))

#: Offline messages go out in pages: a login reply stays small, and a user
#: with a huge backlog does not make the node read it all at once.
OFFLINE_PAGE = 200

_page = bindparam("page", type_=Integer)
#: Rows after this id only (0: from the oldest).
_after = bindparam("after", type_=Integer)

#: A user's oldest page (after an id): their own rows' texts and their shared rows' (userid
#: = minus theirs, the text in offlinebody), each side one range of the
#: (userid, id) index read in order, merged by id.
_INLINE = (
    select(offlinemessage.c.id, offlinemessage.c.message)
    .where((offlinemessage.c.userid == _uid) & (offlinemessage.c.id > _after))
    .order_by(offlinemessage.c.id)
    .limit(_page)
    .subquery()
)
_SHARED = (
    select(offlinemessage.c.id, offlinebody.c.message)
    .join(offlinebody, offlinebody.c.id == offlinemessage.c.bodyid)
    .where((offlinemessage.c.userid == -_uid) & (offlinemessage.c.id > _after))
    .order_by(offlinemessage.c.id)
    .limit(_page)
    .subquery()
)
_BOTH = union_all(select(_INLINE.c.id, _INLINE.c.message), select(_SHARED.c.id, _SHARED.c.message))
OFFLINE = _BOTH.order_by("id").limit(_page)

_text = bindparam("message", type_=Text)
_uids = bindparam("uids", expanding=True, type_=Integer)

#: Which of some users (ids) have this very text stored as their own row,
#: and which (minus their ids) as a shared one: settles a store whose commit
#: went unanswered (the text carries a unique ``mid``).
HAVE_INLINE = select(offlinemessage.c.userid).where(
    offlinemessage.c.userid.in_(_uids) & (offlinemessage.c.message == _text)
)
HAVE_SHARED = (
    select(offlinemessage.c.userid)
    .join(offlinebody, offlinebody.c.id == offlinemessage.c.bodyid)
    .where(offlinemessage.c.userid.in_(_uids) & (offlinebody.c.message == _text))
)
USERS_EXISTING = select(user.c.id).where(user.c.id.in_(_uids))

USER_EXISTS = select(exists().where(user.c.id == _uid))

#: By id, not "ids up to the last one delivered": two stores for one user can
#: commit out of id order (MariaDB hands out ids at insert, not at commit), so
#: a row below the last delivered id may appear later and must not be lost.
_mine = offlinemessage.c.userid.in_([_uid, -_uid])
_ids = offlinemessage.c.id.in_(bindparam("ids", expanding=True))
DELETE_OFFLINE = delete(offlinemessage).where(_mine & _ids)

#: Inserts only if the user exists: one statement, no check-then-act race.
STORE_OFFLINE = insert(offlinemessage).from_select(
    ["userid", "message", "size", "sender"],
    select(_uid, _text, bindparam("size", type_=Integer), bindparam("sender", type_=Integer)).where(
        exists().where(user.c.id == _uid)
    ),
)

#: Stored count and bytes per receiver, for the offline quotas: ``uids`` holds
#: both each receiver's id and minus it (shared rows), added up by the caller.
MAILBOXES = (
    select(
        offlinemessage.c.userid,
        func.count().label("n"),
        func.coalesce(func.sum(offlinemessage.c.size), 0).label("bytes"),
    )
    .where(offlinemessage.c.userid.in_(_uids))
    .group_by(offlinemessage.c.userid)
)

#: The same for one sender's rows, for the per-sender share.
SENDER_MAILBOXES = MAILBOXES.where(offlinemessage.c.sender == bindparam("sender", type_=Integer))

#: One sender's share rows of some receivers.
SHARES = select(
    mailboxshare.c.userid, mailboxshare.c.n, mailboxshare.c.bytes, mailboxshare.c.checked
).where(
    mailboxshare.c.userid.in_(_uids) & (mailboxshare.c.sender == bindparam("sender", type_=Integer))
)

#: A delivered text's reference gone: ``k`` fewer rows name body ``b``.
UNREF_BODY = (
    update(offlinebody)
    .where(offlinebody.c.id == bindparam("b", type_=BigInteger))
    .values(refs=offlinebody.c.refs - bindparam("k", type_=Integer))
)
DROP_BODIES = delete(offlinebody).where(
    offlinebody.c.id.in_(bindparam("bids", expanding=True)) & (offlinebody.c.refs <= 0)
)
DROP_EMPTY_SHARES = delete(mailboxshare).where(
    (mailboxshare.c.userid == _uid) & (mailboxshare.c.n <= 0)
)

#: The tallies of the same: one row per receiver, not its whole mailbox.
TALLIES = select(mailbox.c.userid, mailbox.c.n, mailbox.c.bytes, mailbox.c.checked).where(
    mailbox.c.userid.in_(bindparam("uids", expanding=True))
)

#: What a delivery's delete will remove (each row's sender, size and shared
#: body), locked so two deletes of the same rows do not both take them off
#: the tallies and the bodies' counts.
DELETING = (
    select(offlinemessage.c.sender, offlinemessage.c.size, offlinemessage.c.bodyid)
    .where(_mine & _ids)
    .with_for_update()
)

GROUPS_CREATED = select(func.count()).where(
    (groupuser.c.userid == _uid) & (groupuser.c.grouprole == "creator")
)
MEMBERSHIPS = select(func.count()).where(groupuser.c.userid == _uid)
FRIEND_COUNT = select(func.count()).where(friend.c.userid == bindparam("who", type_=Integer))

FRIENDS = (
    select(user.c.id, user.c.name)
    .join(friend, friend.c.friendid == user.c.id)
    .where(friend.c.userid == _uid)
    .order_by(user.c.id)
)

#: The groups a user is in past a group id, by id: one row each (names and
#: descriptions are not repeated per member, as a join with the members would).
GROUPS = (
    select(allgroup.c.id, allgroup.c.groupname, allgroup.c.groupdesc)
    .join(groupuser, groupuser.c.groupid == allgroup.c.id)
    .where((groupuser.c.userid == _uid) & (groupuser.c.groupid > bindparam("after")))
    .order_by(allgroup.c.id)
)

#: The members of some groups, by group then user id. Only the columns a
#: login reply shows; the role is read as text (no Enum processing per row:
#: a 1,000-member group is 1,000 rows).
MEMBERS = (
    select(
        groupuser.c.groupid,
        user.c.id,
        user.c.name,
        type_coerce(groupuser.c.grouprole, String),
    )
    .join(user, user.c.id == groupuser.c.userid)
    .where(groupuser.c.groupid.in_(bindparam("gids", expanding=True, type_=Integer)))
    .order_by(groupuser.c.groupid, user.c.id)
)

GROUP_MEMBERS = select(groupuser.c.userid).where(groupuser.c.groupid == bindparam("gid"))
GROUP_SIZE = select(func.count()).where(groupuser.c.groupid == bindparam("gid"))

ONLINE = update(user).where(user.c.id == _uid).values(state="online")
ONLINE_WITH_TICKET = (
    update(user)
    .where(user.c.id == _uid)
    .values(state="online", ticket=bindparam("ticket"), ticketexpiry=bindparam("expiry"))
)
#: A ticket login: the ticket used is replaced, only if it is still the one stored
#: (two logins racing with one ticket: one wins).
ROTATE_TICKET = (
    update(user)
    .where((user.c.id == _uid) & (user.c.ticket == bindparam("old")))
    .values(state="online", ticket=bindparam("ticket"), ticketexpiry=bindparam("expiry"))
)
#: After ROTATE_TICKET for many users in one transaction: which now hold
#: the new digest (an UPDATE's rowcount is not per row in an executemany).
TICKETS_MANY = select(user.c.id, user.c.ticket).where(
    user.c.id.in_(bindparam("uids", expanding=True))
)
LOGGED_OUT = (
    update(user).where(user.c.id == _uid).values(state="offline", ticket=None, ticketexpiry=None)
)
