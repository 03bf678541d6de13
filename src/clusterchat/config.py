"""Node settings, with defaults that are safe for users.

The literal defaults live here and nowhere else: `clusterchat server`'s
options (options.py) read them from these dataclasses. Tests make things
fast (cheap hash cost, short timeouts) by passing their own
:class:`Settings`; nothing here is weakened for them. This module imports
no service code, so the terminal client can use it without loading argon2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clusterchat.budget import default_budget
from clusterchat.protocol.framing import DEFAULT_MAX_FRAME

#: Default retention of history: about three months, what people expect to
#: scroll back through in a team chat (Slack's free plan shows 90 days), at a
#: cost in storage that stops growing after those 90 days (expired rows are
#: purged every minute, see service/history.py); an operator who needs years sets it.
HISTORY_DAYS = 90.0
#: Messages waiting to be written to history before chats are refused as busy.
#: A healthy store empties the queue every few milliseconds; 100,000 rides out
#: a store pause of about a second at tens of thousands of messages a second,
#: and the start of a load at a node's ceiling (~150,000 a second), when the
#: first rounds fall behind and the queue peaked at 33,000 (BENCHMARKS.md).
#: Its memory stays under the byte bound (service/history.py, QUEUE_BYTES).
HISTORY_QUEUE = 100_000

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6000


def data_dir() -> Path:
    """``$CLUSTERCHAT_HOME``, else the per-user data directory (XDG)."""
    home = os.environ.get("CLUSTERCHAT_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "clusterchat"


#: File descriptors kept free for the store, Redis, logs and the listener.
FD_RESERVE = 64


def connection_limit(configured: int) -> int:
    """Past the process's descriptor limit accept() would fail; refuse before."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    by_fds = max(1, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY else 1_000_000
    return min(configured, by_fds) if configured > 0 else by_fds


def default_db_url() -> str:
    return f"sqlite+aiosqlite:///{data_dir() / 'chat.db'}"


@dataclass(frozen=True)
class Limits:
    """What one user or address may do; 0 switches a limit off."""

    #: Failed logins free of delay per (account, address) and per address;
    #: past them each try waits twice as long as the last, from
    #: ``login_delay`` up to ``login_delay_max`` seconds (service.backoff).
    #: A key is forgotten ``login_window`` seconds after its last failure.
    login_failures: int = 5
    login_failures_per_address: int = 50
    login_window: float = 900.0
    login_delay: float = 5.0
    login_delay_max: float = 600.0
    max_group_size: int = 1000
    #: Seconds after leaving a group before one may join it again (ERROR
    #: 170). Each join and leave rereads the roster under the group's lock,
    #: drops every node's cached member list and tells every member: 20
    #: accounts joining and leaving a 1,000-member group, under the flood
    #: limit, took its members' chats from 2 ms to 220 ms. 0: no wait.
    rejoin_after: float = 60.0
    #: Seconds a session ticket works after it was issued (each use issues a new one).
    ticket_lifetime: float = 28 * 86_400.0
    #: Registrations one address may attempt per window (counted when the
    #: password hash starts): accounts per address per day.
    registrations_per_address: int = 20
    registration_window: float = 86_400.0
    #: What one receiver may have waiting (ejabberd keeps 5,000 messages by
    #: default), how long a message kept for an offline receiver may be
    #: (bytes; group chat is always kept for someone, so it always applies),
    #: and what one user may own or join.
    max_offline_messages: int = 5000
    max_offline_bytes: int = 16 * 1024 * 1024
    max_stored_message: int = 16 * 1024
    #: The fraction of those bounds (messages and bytes) one sender may fill
    #: in one receiver's mailbox: a stranger cannot fill it for everyone
    #: else. A quarter: 1,250 messages or 4 MiB by default.
    offline_share: float = 0.25
    #: The fraction of those bounds group messages may fill, all groups and
    #: writers together; the rest is room only 1:1 messages take. Without
    #: it, five accounts posting in a public group filled every away
    #: member's mailbox at once (each writer a share, times every member),
    #: and their friends' messages were refused (ERROR 171) until they came
    #: back. A group message not kept for a member is in the group's history.
    offline_group_share: float = 0.5
    max_groups_created: int = 100
    max_memberships: int = 500
    max_friends: int = 1000
    #: Requests per second a logged-in user may make, sustained, and how many
    #: may come at once (a token bucket). Far above any typing human; a bot
    #: or a stuck loop is slowed down, never allowed to crowd out the others.
    message_rate: float = 20.0
    message_burst: int = 50
    #: Before login the flood limit is per client address too, over all its
    #: connections: this many requests at once, then ``message_rate`` a
    #: second (a whole NAT's connections may log in at once; a flooder gains
    #: nothing from opening more connections). Trusted proxies' own
    #: connections are not metered by address. 0: per connection only.
    address_burst: int = 500
    #: Receipts (clients that opted in): messages and bytes written and not yet
    #: acknowledged before the client is cut off (ERROR 187, all stored), and
    #: seconds without any acknowledgement while some wait (ERROR 186, stored).
    receipt_window: int = 2000
    receipt_bytes: int = 2 * 1024 * 1024
    receipt_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class HashCost:
    """argon2id cost; the default is OWASP's recommended minimum."""

    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_url: str = field(default_factory=default_db_url)
    #: Connections to MariaDB/MySQL per node (SQLite always uses one).
    db_pool: int = 20
    max_frame: int = DEFAULT_MAX_FRAME
    #: Bytes of chat messages held for a peer that is not reading before it
    #: is cut off (what it was not sent is stored offline).
    output_limit: int = 1024 * 1024
    #: Bytes held for other people (slow readers, re-stores) before chats are
    #: refused as busy; by default a quarter of the machine's memory (0: no limit).
    memory_budget: int = field(default_factory=default_budget)
    #: Connections this node accepts; 0: as many as its file descriptors allow.
    max_connections: int = 0
    #: Connections from one client address (0: no limit). Users behind one
    #: NAT share an address: raise it for them. Behind nginx the real address
    #: comes in the PROXY line, or X-Forwarded-For on the WebSocket path
    #: (``cluster up`` configures both).
    max_connections_per_address: int = 100
    #: Addresses whose PROXY protocol lines (TCP) and X-Forwarded-For headers
    #: (WebSocket/HTTP) are believed, and which are not capped per address
    #: themselves (loopback: nginx, or tools, on this machine).
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    limits: Limits = field(default_factory=Limits)
    hash_cost: HashCost = field(default_factory=HashCost)
    #: Password checks that may wait for a hashing thread; past it, logins and
    #: registrations are refused as "busy" at once (0: no limit).
    login_queue: int = 64
    #: Registrations that may wait for their own (smaller) hashing pool; past
    #: it they are refused as "busy", and password logins keep their threads.
    register_queue: int = 64
    #: Event-loop lag (seconds) past which new connections are refused until
    #: the node has caught up (0: never).
    shed_lag: float = 0.5
    shutdown_grace: float = 5.0
    #: Join a cluster through this Redis; None runs a lone node.
    redis_url: str | None = None
    #: Key and channel prefix, so several clusters can share one Redis.
    redis_prefix: str = "clusterchat:"
    #: Seconds after which a node that stopped heartbeating (killed) frees its users.
    presence_ttl: float = 10.0
    #: Bytes of messages one node may have in flight to another, unacknowledged;
    #: kept under half of Redis's pub/sub buffer limit, which would cut the receiver.
    bus_window: int = 4 * 1024 * 1024
    #: Names this node in Redis and in PONG replies; random when empty.
    node_id: str = ""
    #: Seconds a connection may stay without logging in, counted from accept
    #: (or logout) whatever it sends meanwhile.
    login_timeout: float = 30.0
    #: Seconds one request may take to arrive once its first byte has.
    frame_timeout: float = 30.0
    #: Seconds a logged-in client of ours may stay silent (it pings every 30 s).
    #: The original client never pings, so its connections rely on TCP keepalive.
    idle_timeout: float = 120.0
    #: Serve TLS with this certificate chain and key (PEM files); None: plain TCP.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Serve the web client and WebSocket chat (/ws) on this port; None: off, 0: any free port.
    http_port: int | None = None
    #: Origins allowed to open /ws (e.g. "https://chat.example.com"; "*": any);
    #: empty: the page's own origin only.
    http_origins: tuple[str, ...] = ()
    #: Addresses and networks that may read /metrics, /healthz and /readyz on
    #: the HTTP port (the web client's port, often public): loopback and the
    #: private ranges a scraper or a load balancer's checks come from.
    ops_from: tuple[str, ...] = (
        "127.0.0.0/8",
        "::1",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    )
    #: Days every 1:1 and group message is kept for HISTORY requests (0: none
    #: is written); fractions allowed.
    history_days: float = HISTORY_DAYS
    #: Messages waiting to be written to history before chats are refused as busy.
    history_queue: int = HISTORY_QUEUE
    #: Share the port with sibling worker processes (SO_REUSEPORT).
    reuse_port: bool = False


def default_port() -> int:
    """Where our clients and the benchmark connect by default: nginx's port
    when `clusterchat cluster up` is running here (its --listen-port, 8000
    unless chosen), else a lone node's 6000."""
    state = data_dir() / "cluster" / "cluster.json"
    try:
        listen = json.loads(state.read_text()).get("listen", "")
    except FileNotFoundError:
        return DEFAULT_PORT
    except (OSError, ValueError, AttributeError):
        return 8000
    port = str(listen).rpartition(":")[2]
    return int(port) if port.isdigit() else 8000
