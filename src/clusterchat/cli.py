"""`clusterchat`: the one entry point. Every option can also come from the
environment (the variable is named in each option's help)."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from clusterchat.config import DEFAULT_HOST, DEFAULT_PORT, default_db_url, default_port
from clusterchat.options import OPTIONS, add_server_options, settings_from


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _add_db(p: argparse.ArgumentParser) -> None:
    OPTIONS["--db"].add_to(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterchat",
        description="A cluster chat server, wire-compatible with the classic C++ "
        "muduo chat system. Start a node with `clusterchat server`.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=_env("CLUSTERCHAT_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR [env CLUSTERCHAT_LOG_LEVEL; default INFO]",
    )
    common.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=_env("CLUSTERCHAT_LOG_FORMAT", "text"),
        help="text for people, or json: one object a line (ts, level, logger, msg, conn: "
        "the client connection's id) for log shippers [env CLUSTERCHAT_LOG_FORMAT; "
        "default text]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    srv = sub.add_parser(
        "server",
        parents=[common],
        help="run a chat server node",
        usage="%(prog)s [IP] [PORT] [options]",
        description="Run one chat server node. With no options it listens on "
        f"{DEFAULT_HOST}:{DEFAULT_PORT} and keeps everything in an embedded SQLite file. "
        "The original's form `clusterchat server IP PORT` works too.",
    )
    srv.add_argument("ip", nargs="?", metavar="IP", help="the address to listen on (as --host)")
    srv.add_argument(
        "port_pos", nargs="?", type=int, metavar="PORT", help="the TCP port (as --port)"
    )
    add_server_options(srv)

    cli = sub.add_parser(
        "client",
        parents=[common],
        help="chat from the terminal",
        description="Chat from the terminal. With a terminal: a login/register menu, then a "
        "prompt (type help). Without one (stdin a pipe or file): reads one command per line "
        "and prints one event per line, for scripts; it exits 1 if any line was not done "
        "(refused, not understood, not logged in, connection down), else 0. Reconnects by "
        "itself. The server is "
        "nginx's port (127.0.0.1:8000, or the --listen-port chosen) when `clusterchat "
        "cluster up` runs on this machine, else 127.0.0.1:6000 (a lone node).",
    )
    cli.add_argument("host_pos", nargs="?", metavar="HOST", help="server address")
    cli.add_argument("port_pos", nargs="?", type=int, metavar="PORT", help="server port")
    cli.add_argument("--host", default=_env("CLUSTERCHAT_HOST", "127.0.0.1"),
                     help="server address [env CLUSTERCHAT_HOST; default 127.0.0.1]")  # fmt: skip
    cli.add_argument("--port", type=int, default=None,
                     help="server port [env CLUSTERCHAT_PORT; default nginx's (8000, or "
                     "`cluster up --listen-port`) if a cluster is up here, else 6000]")  # fmt: skip
    cli.add_argument("--user", type=int, default=None, metavar="ID",
                     help="log in as this user id at once")  # fmt: skip
    cli.add_argument("--password", default=None,
                     help="password for --user [env CLUSTERCHAT_PASSWORD; else asked]")  # fmt: skip
    cli.add_argument("--tls", action="store_true",
                     help="connect with TLS (node --tls-cert, or TLS in nginx)")  # fmt: skip
    cli.add_argument("--tls-ca", default=None, metavar="PEM",
                     help="trust this CA (or self-signed certificate) for --tls")  # fmt: skip
    cli.add_argument("--json", action="store_true",
                     help="print each protocol message received, raw, one per line on "
                     "stdout; the client's own lines go to stderr")  # fmt: skip

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="load-test a server or cluster",
        description="Drive a server or cluster with one load scenario and report ops/s, "
        "latency percentiles (p50/p99/p99.9) and losses. It creates its own users. "
        "Scenarios: reg (registrations), login (a storm of fresh logins), reconnect "
        "(every user drops and logs back in at once, with its session ticket), chat "
        "(pairs messaging each other), group (fan-out to one group), soak (hours of "
        "ordinary use with users coming and going: checks nothing is lost and, with "
        "--server-pid, that the server's memory does not grow).",
    )
    bench.add_argument(
        "scenario",
        choices=["reg", "login", "reconnect", "chat", "group", "soak"],
        metavar="SCENARIO",
        help="reg, login, reconnect, chat, group or soak (above)",
    )
    bench.add_argument(
        "--target",
        default=None,
        type=_targets,
        metavar="HOST:PORT[,HOST:PORT]",
        help="server(s); connections alternate between them [default 127.0.0.1:8000 (nginx, "
        "or its --listen-port) when `clusterchat cluster up` runs on this machine, else "
        "127.0.0.1:6000]",
    )
    bench.add_argument("-n", "--users", type=int, default=200,
                       help="users (reg, login, reconnect, soak) [default 200]")  # fmt: skip
    bench.add_argument("-c", "--concurrency", type=int, default=16,
                       help="requests in flight (reg, login) [default 16]")  # fmt: skip
    bench.add_argument("-p", "--pairs", type=int, default=10, help="chat pairs [default 10]")
    bench.add_argument("-w", "--window", type=int, default=1,
                       help="messages in flight per sender [default 1]")  # fmt: skip
    bench.add_argument("-t", "--seconds", type=float, default=5.0,
                       help="measured seconds (chat, group); soak: how long it runs "
                            "[default 5]")  # fmt: skip
    bench.add_argument("--warmup", type=float, default=1.0,
                       help="unmeasured seconds first [default 1]")  # fmt: skip
    bench.add_argument("-g", "--members", type=int, default=20,
                       help="group members [default 20]")  # fmt: skip
    bench.add_argument("-s", "--senders", type=int, default=1,
                       help="group senders [default 1]")  # fmt: skip
    bench.add_argument("--msg-size", type=int, default=32, help="message bytes [default 32]")
    bench.add_argument("--rate", type=float, default=0.0, metavar="PER_SECOND",
                       help="login: start this many logins a second however fast the "
                       "server answers (to offer more than it can take; default: -c at "
                       "a time); soak: messages a second per user (default 2)")  # fmt: skip
    bench.add_argument("--server-pid", type=int, default=0, metavar="PID",
                       help="soak: sample this server process's memory; chat, group: "
                       "report its CPU use, and per delivery (on this machine)")  # fmt: skip
    bench.add_argument("--transport", choices=["tcp", "ws"], default="tcp",
                       help="tcp, or ws: WebSockets to the targets' HTTP ports "
                       "(server --http-port) [default tcp]")  # fmt: skip
    bench.add_argument("--dialect", choices=["modern", "nul"], default="modern",
                       help="modern: our clients' (newline-framed, every chat acknowledged); "
                       "nul: the original C++ client's (NUL-framed, no CHAT_ACK); TCP only, "
                       "not for group or soak [default modern]")  # fmt: skip
    bench.add_argument("--receipts", action="store_true",
                       default=_env("CLUSTERCHAT_BENCH_RECEIPTS", "") not in ("", "0"),
                       help="chat, group: log in asking for receipts and acknowledge pushes "
                       "(RECEIVED every 64 messages or each second), as our clients do "
                       "[env CLUSTERCHAT_BENCH_RECEIPTS]")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="one JSON line instead of a table")

    cl = sub.add_parser(
        "cluster",
        parents=[common],
        help="run a cluster on this machine behind nginx",
        description="Start or stop N server nodes plus nginx (TCP stream load balancer) in "
        "front of them, all on this machine; or print an nginx configuration.",
    )
    clsub = cl.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    run_dir_help = (
        "where logs, nginx.conf and the record of what runs go [env "
        "CLUSTERCHAT_CLUSTER_DIR; default $CLUSTERCHAT_HOME/cluster]"
    )
    cup = clsub.add_parser(
        "up",
        help="start N nodes and nginx",
        description="Start N `clusterchat server` processes on consecutive ports and nginx "
        "on --listen-port balancing TCP connections over them. Nodes share --db and talk "
        "through --redis. Connect clients to the nginx port.",
    )
    cup.add_argument("--nodes", type=int, default=2, help="how many nodes [default 2]")
    cup.add_argument(
        "--host", default="127.0.0.1", help="address for everything [default %(default)s]"
    )
    cup.add_argument("--listen-port", type=int, default=8000, help="nginx's port [default 8000]")
    cup.add_argument(
        "--base-port", type=int, default=6000, help="node i listens on base-port + i [default 6000]"
    )
    cup.add_argument(
        "--web-port",
        type=int,
        default=8080,
        help="nginx's HTTP port for browsers: the web client and its WebSocket, proxied "
        "to every node's --http-port; 0: off [default %(default)s]",
    )
    cup.add_argument(
        "--http-base-port",
        type=int,
        default=6100,
        help="node i serves HTTP on http-base-port + i [default %(default)s]",
    )
    _add_db(cup)
    cup.add_argument(
        "--redis",
        default=_env("CLUSTERCHAT_REDIS", "redis://127.0.0.1:6379/0"),
        metavar="URL",
        help="Redis the nodes share [env CLUSTERCHAT_REDIS; default %(default)s]",
    )
    cup.add_argument("--dir", default=_env("CLUSTERCHAT_CLUSTER_DIR", ""), help=run_dir_help)
    cup.add_argument(
        "--nginx", default="/usr/sbin/nginx", help="nginx binary [default %(default)s]"
    )
    cup.add_argument(
        "server_args",
        nargs=argparse.REMAINDER,
        metavar="-- SERVER_OPTION",
        help="after --, options for every node, e.g. `-- --presence-ttl 5` "
        "(see `clusterchat server -h`)",
    )
    cdown = clsub.add_parser(
        "down",
        help="stop what `cluster up` started",
        description="Stop exactly the processes `cluster up` recorded in its directory.",
    )
    cdown.add_argument("--dir", default=_env("CLUSTERCHAT_CLUSTER_DIR", ""), help=run_dir_help)
    conf = clsub.add_parser(
        "nginx-conf",
        help="print an nginx stream configuration",
        description="Print the `stream {}` block that balances TCP connections over the "
        "given nodes, for an nginx you run yourself (needs the stream module).",
    )
    conf.add_argument("upstreams", nargs="+", metavar="HOST:PORT", help="the nodes")
    conf.add_argument("--listen", default="8000", help="nginx's listen address [default 8000]")
    conf.add_argument("--tls-cert", default=None, metavar="PEM",
                      help="terminate TLS in nginx with this certificate")  # fmt: skip
    conf.add_argument("--tls-key", default=None, metavar="PEM", help="its private key")
    conf.add_argument("--http", default="", metavar="HOST:PORT[,HOST:PORT]",
                      help="the nodes' HTTP ports (--http-port): also print the http {} "
                      "block proxying browsers and WebSockets to them")  # fmt: skip
    conf.add_argument("--http-listen", default="8080",
                      help="nginx's HTTP listen address, with --http [default 8080]")  # fmt: skip

    _admin_parser(sub, common)

    db = sub.add_parser(
        "db", parents=[common], help="manage the store", description="Manage the SQL store."
    )
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    init = dbsub.add_parser(
        "init",
        help="create the database and tables if missing",
        description="Create the schema (and, on MySQL/MariaDB, the database); on an "
        "existing database the same as `db upgrade`. Safe to run again. A server does this "
        "by itself on first start with an empty database.",
    )
    _add_db(init)
    upgrade = dbsub.add_parser(
        "upgrade",
        help="bring the schema to this version's (migrations)",
        description="Upgrade the schema of any earlier clusterchat database, or of one "
        "created by the original C++ system's SQL (its plaintext passwords become argon2id "
        "hashes at each user's next login), to this version's; an empty database gets the "
        "whole schema. Back the database up first. Safe to run again.",
    )
    _add_db(upgrade)
    status = dbsub.add_parser(
        "status",
        help="print the schema revision the database is at",
        description="Print the database's schema revision and whether this version of "
        "clusterchat can run on it.",
    )
    _add_db(status)
    schema = dbsub.add_parser(
        "schema",
        help="print the MySQL/MariaDB schema (chat.sql)",
        description="Print the schema as MySQL statements, for creating the database by hand.",
    )
    schema.add_argument("--database", default="chat", help="database name [default chat]")
    return parser


def _admin_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    adm = sub.add_parser(
        "admin",
        parents=[common],
        help="operate a running cluster: users, kick, ban, groups",
        description="Operator commands against the database and, with --redis, the "
        "cluster: who is online on which node, ending sessions (kick, ban, delete). "
        "Each change is logged as an audit line on stderr.",
    )
    _add_db(adm)
    adm.add_argument(
        "--redis",
        default=_env("CLUSTERCHAT_REDIS", ""),
        metavar="URL",
        help="the cluster's Redis (needed to see who is online and to kick) "
        "[env CLUSTERCHAT_REDIS]",
    )
    OPTIONS["--redis-prefix"].add_to(adm)  # the nodes' own
    act = adm.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    # --db, --redis and --redis-prefix after the action too (`admin users --db URL`):
    # without a value there, the one before the action (or its env) stands.
    where = argparse.ArgumentParser(add_help=False)
    here = where.add_argument_group("where (also accepted before the action)")
    keep = argparse.SUPPRESS
    here.add_argument("--db", metavar="URL", default=keep, type=OPTIONS["--db"].convert,
                      help="the store [env CLUSTERCHAT_DB]")  # fmt: skip
    here.add_argument("--redis", metavar="URL", default=keep,
                      help="the cluster's Redis [env CLUSTERCHAT_REDIS]")  # fmt: skip
    here.add_argument("--redis-prefix", dest="redis_prefix", metavar="PREFIX", default=keep,
                      help="the nodes' --redis-prefix [env CLUSTERCHAT_REDIS_PREFIX]")  # fmt: skip

    def action(name: str, text: str) -> argparse.ArgumentParser:
        one: argparse.ArgumentParser = act.add_parser(
            name, help=text, description=text[:1].upper() + text[1:] + ".", parents=[where]
        )
        return one

    users = action("users", "list users (id, name, state, banned, node)")
    users.add_argument("--online", action="store_true", help="only those logged in")
    action("nodes", "live nodes and how many users each holds (needs --redis)")
    action("counts", "users, banned, groups, friendships, offline messages, online")
    group = action("group", "show a group and its members")
    group.add_argument("gid", type=int, metavar="GROUP_ID", help="the group's id")
    for name, text in (
        ("kick", "end the user's session, on whichever node holds it (they may log in again)"),
        ("ban", "forbid logging in (LoginErr 6), revoke the ticket, end the session"),
        ("unban", "allow logging in again"),
        ("delete", "delete the user with friendships, memberships, offline messages and history"),
    ):
        one = action(name, text)
        one.add_argument("uid", type=int, metavar="USER_ID", help="the user's id")
    reset = action(
        "reset-password", "set a new password (random if not given, printed alone on stdout)"
    )
    reset.add_argument("uid", type=int, metavar="USER_ID", help="the user's id")
    reset.add_argument("--password", default=None, help="the new password [default: random]")


def _admin(args: argparse.Namespace) -> int:
    from clusterchat.admin import Admin, AdminError, print_users
    from clusterchat.storage.sql import sqlite_file

    out: list[int] = []

    async def go() -> None:
        async with Admin(args.db or default_db_url(), args.redis or None, args.redis_prefix) as a:
            cmd = args.admin_command
            if cmd in ("users", "kick") and (cmd == "kick" or args.online):
                await a.require_nodes()
            elif cmd in ("ban", "delete") and a.redis is not None and not await a.nodes():
                # Not refused: with every node down nobody is online, and the
                # operator must still be able to act. But a wrong prefix kicks
                # no one, so say it.
                print(
                    f"warning: no live nodes under prefix {args.redis_prefix!r}: a session "
                    "on nodes under another prefix is not ended (set --redis-prefix / "
                    "CLUSTERCHAT_REDIS_PREFIX to the nodes' own)",
                    file=sys.stderr,
                )
            elif cmd in ("ban", "delete") and a.redis is None and not sqlite_file(a.db_url):
                print(
                    "warning: without --redis a session on a node is not ended (only a node "
                    "alone on an SQLite file is reached without it): pass the nodes' --redis",
                    file=sys.stderr,
                )
            if cmd == "users":
                print_users(await a.users(args.online))
            elif cmd == "nodes":
                if a.redis is None:
                    raise AdminError("nodes needs --redis")
                nodes = await a.nodes()
                if not nodes:
                    print(f"no live nodes under prefix {args.redis_prefix!r} in {args.redis}")
                for node, uids in sorted(nodes.items()):
                    print(f"{node}  {len(uids)} users")
            elif cmd == "counts":
                for key, n in (await a.counts()).items():
                    print(f"{key:<17} {n}")
            elif cmd == "group":
                name, desc, members = await a.group(args.gid)
                print(f"group {args.gid} {name!r}: {desc}")
                for uid, uname, role in members:
                    print(f"{uid:>8}  {uname:<24} {role}")
            elif cmd == "kick":
                was = await a.kick(args.uid)
                print(f"user {args.uid}: " + ("session ended" if was else "was not online"))
            elif cmd in ("ban", "unban"):
                await a.ban(args.uid, cmd == "ban")
                print(f"user {args.uid} {cmd}ned")
            elif cmd == "reset-password":
                pw = await a.reset_password(args.uid, args.password)
                print(pw if args.password is None else f"user {args.uid}: password set")
            elif cmd == "delete":
                gone = await a.delete_user(args.uid)
                print(f"user {args.uid} deleted: " + ", ".join(f"{n} {k}" for k, n in gone.items()))
        out.append(0)

    from clusterchat.errors import Unavailable
    from clusterchat.storage.sql import missing_file

    if path := missing_file(args.db or default_db_url()):
        print(f"clusterchat admin: no such database file: {path}", file=sys.stderr)
        return 1
    try:
        _run(go())
    except AdminError as exc:
        print(f"clusterchat admin: {exc}", file=sys.stderr)
        return 1
    except Unavailable as exc:
        print(f"clusterchat admin: {_why(exc)}", file=sys.stderr)
        return 1
    return out[0]


def _run(coro: object) -> None:
    import uvloop

    uvloop.run(coro)  # type: ignore[arg-type]


def _server(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from clusterchat.server.backends import open_backends
    from clusterchat.server.node import Node, new_node_id
    from clusterchat.server.workers import WORKER_ENV, supervise

    worker = os.environ.get(WORKER_ENV) == "1"
    if args.workers > 1 and not worker:
        if not args.redis:
            raise SystemExit("--workers needs --redis: the workers talk through it")
        return supervise(list(argv if argv is not None else sys.argv[1:]), args.workers)
    node_id = args.node_id
    if worker and node_id:
        node_id += "-" + os.environ.get("CLUSTERCHAT_WORKER_SLOT", "0")
    settings = settings_from(
        vars(args),
        host=args.ip or args.host,
        port=args.port if args.port_pos is None else args.port_pos,  # 0: any free port
        node_id=node_id or new_node_id(),
        reuse_port=worker,
    )
    from clusterchat.errors import SchemaMismatch, Unavailable
    from clusterchat.server import storelock

    try:
        address = f"{settings.host}:{settings.port}"
        _held = storelock.hold(settings.db_url, not settings.redis_url, address)
        if _held is not None and not settings.redis_url:
            # Our pid is in the lock file now: `clusterchat admin`'s SIGUSR1
            # (server/control.py) must not end us before the node listens for it.
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    except storelock.StoreInUse as exc:
        print(f"clusterchat server: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        backends = open_backends(settings, settings.node_id)
        _run(Node(settings, backends=backends).run_until_signalled())
    except SchemaMismatch as exc:
        print(f"clusterchat server: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # a wrong --db/--redis, or the service down: no traceback
        print(f"clusterchat server: cannot start: {_why(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        # A port taken by another program is the newcomer's usual first error.
        print(f"clusterchat server: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def _why(exc: BaseException) -> str:
    """An Unavailable's text with the driver's own words, if it has them."""
    from clusterchat.storage.sql import UNKNOWN_DATABASE

    cause = getattr(exc.__cause__, "orig", None)
    code = getattr(cause, "args", (None,))[:1]
    if code == (UNKNOWN_DATABASE,):
        return (
            "the database does not exist on that server: `clusterchat db init` (with the "
            f"same --db) creates it ({cause or exc})"
        )
    text = str(exc)
    return f"{text}: {cause}" if cause is not None and str(cause) not in text else text


def _targets(value: str) -> list[tuple[str, int]]:
    """``--target HOST:PORT[,HOST:PORT]``: a word that is not one is an
    argparse error naming it ("nonsense" ended in a traceback)."""
    targets = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not HOST:PORT (e.g. 127.0.0.1:6000; PORT 1-65535)"
            )
        targets.append((host or "127.0.0.1", int(port)))
    return targets


def _await_targets(targets: list[tuple[str, int]], pid: int, patience: float) -> bool:
    """With --server-pid, the server may have just been started (the README's
    `clusterchat server … & clusterchat bench soak … --server-pid $!`): wait,
    while that process lives, until every target accepts a connection. The
    benchmark used to start at once and fail with "Connection refused"."""
    import socket
    import time

    deadline = time.monotonic() + patience
    waiting = list(targets)
    while waiting:
        try:
            with socket.create_connection(waiting[0], timeout=1.0):
                waiting.pop(0)
                continue
        except OSError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: alive
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _bench(args: argparse.Namespace) -> int:
    from clusterchat.bench.conn import Closed
    from clusterchat.bench.main import run as run_bench
    from clusterchat.bench.scenarios import BenchError, Options, explain

    targets = args.target or [("127.0.0.1", default_port())]
    where = ",".join(f"{host}:{port}" for host, port in targets)
    opts = Options(
        targets=targets,
        users=args.users,
        concurrency=args.concurrency,
        pairs=args.pairs,
        window=args.window,
        seconds=args.seconds,
        warmup=args.warmup,
        members=args.members,
        senders=args.senders,
        msg_size=args.msg_size,
        rate=args.rate,
        server_pid=args.server_pid,
        transport=args.transport,
        dialect=args.dialect,
        receipts=args.receipts,
    )
    if opts.nul and (opts.transport == "ws" or args.scenario in ("group", "soak")):
        # The original client had no WebSocket, learnt no group id from a
        # reply, and the soak checks acknowledgements.
        print("clusterchat bench: --dialect nul is for reg, login, reconnect and chat over tcp",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.server_pid and not _await_targets(targets, args.server_pid, 30.0):
        print(f"clusterchat bench: {where}: not accepting connections (process "
              f"{args.server_pid} gone, or 30 s passed)", file=sys.stderr)  # fmt: skip
        return 1
    results = []

    async def go() -> None:
        results.append(await run_bench(args.scenario, opts, args.json))

    try:
        _run(go())
    except BenchError as exc:
        print(f"clusterchat bench: {exc}", file=sys.stderr)
        return 1
    except Closed as exc:
        print(f"clusterchat bench: {explain(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"clusterchat bench: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0 if results and not results[0].errors and not results[0].lost else 1


def _cluster(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clusterchat.cluster import launcher
    from clusterchat.cluster.nginx import http_block, stream_block
    from clusterchat.config import data_dir

    if args.cluster_command == "nginx-conf":
        print(stream_block(args.upstreams, args.listen, args.tls_cert, args.tls_key), end="")
        if args.http:
            web = [u.strip() for u in args.http.split(",") if u.strip()]
            print(http_block(web, args.http_listen, args.tls_cert, args.tls_key), end="")
        return 0
    run_dir = Path(args.dir) if args.dir else data_dir() / "cluster"
    try:
        if args.cluster_command == "down":
            stopped, gone = launcher.down(run_dir)
            print(f"stopped {', '.join(stopped) or 'nothing'}")
            if gone:
                print(f"not running any more (nothing to stop): {', '.join(gone)}")
            return 0
        extra = [a for a in args.server_args if a != "--"]
        extra += ["--db", args.db or default_db_url(), "--redis", args.redis]
        state = launcher.up(
            run_dir, args.nodes, args.listen_port, args.base_port, args.host, extra, args.nginx,
            web_port=args.web_port, http_base_port=args.http_base_port,
        )  # fmt: skip
    except RuntimeError as exc:
        print(f"clusterchat cluster: {exc}", file=sys.stderr)
        return 1
    nodes = ", ".join(f"{p.name} :{p.port}" for p in state.procs if p.name != "nginx")
    print(f"cluster up: nginx on {state.listen} -> {nodes}")
    if state.web:
        print(f"web client: http://{state.web}/")
    print(f"logs and nginx.conf in {run_dir}; stop with `clusterchat cluster down`")
    return 0


def _db(args: argparse.Namespace) -> int:
    from clusterchat.storage.sql import SqlStore, missing_file

    if args.db_command == "status" and (path := missing_file(args.db or default_db_url())):
        print(
            f"clusterchat db: no such database file: {path} (`clusterchat db init` creates it)",
            file=sys.stderr,
        )
        return 1

    out: list[int] = []

    async def go() -> None:
        store = SqlStore(args.db or default_db_url())
        try:
            if args.db_command == "status":
                st = await store.schema_state()
                print(f"{store.url}: revision {st.revision or 'none (empty)'}, head {st.head}")
                problem = st.problem()
                print(problem or "a node can start on it")
                out.append(1 if problem else 0)
                return
            before, after = await store.upgrade_schema()
            moved = "already at" if before == after else f"from {before or 'nothing'} to"
            print(f"schema ready in {store.url}: {moved} revision {after}")
            out.append(0)
        finally:
            await store.close()

    from clusterchat.errors import Unavailable

    try:
        _run(go())
    except Unavailable as exc:
        print(f"clusterchat db: {_why(exc)}", file=sys.stderr)
        return 1
    return out[0]


def main(argv: Sequence[str] | None = None) -> int:
    """`clusterchat ...`; output cut short by its reader (`| head`) ends it
    quietly, as SIGPIPE ends a C program, instead of with a traceback.

    Ctrl-C ends any command with one line, not a traceback. A server asked
    to stop (SIGINT or SIGTERM) exits 0 whenever the signal comes, as it
    does once it serves: while it starts (imports take a while on a busy
    machine) it has no handler of its own yet, so SIGTERM is made to
    interrupt it as SIGINT does. Any other command interrupted did not do
    its job: 130, the shell's code for SIGINT."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = words[0] if words else ""
    if command == "server":
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(argv)
    except BrokenPipeError:
        # Python would flush stdout again at exit and complain: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        if command == "server":
            print("clusterchat server: signal received while starting; stopped", file=sys.stderr)
            return 0
        what = f"clusterchat {command}" if command else "clusterchat"
        print(f"{what}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clusterchat.logs import setup as setup_logs

    setup_logs(args.log_level, args.log_format)
    if args.command == "server":
        return _server(args, argv)
    if args.command == "cluster":
        return _cluster(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "client":
        from clusterchat.client.main import ClientOptions
        from clusterchat.client.main import run as run_client

        env_port = os.environ.get("CLUSTERCHAT_PORT")
        port = args.port_pos or args.port or (int(env_port) if env_port else default_port())
        opts = ClientOptions(
            args.host_pos or args.host,
            port,
            args.user,
            args.password,
            args.json,
            tls=args.tls or bool(args.tls_ca),
            tls_ca=args.tls_ca,
        )
        result: list[int] = []

        async def client() -> None:
            result.append(await run_client(opts))

        _run(client())
        return result[0]
    if args.command == "db" and args.db_command == "schema":
        from clusterchat.storage.tables import mysql_ddl

        print(mysql_ddl(args.database), end="")
        return 0
    if args.command == "db":
        return _db(args)
    if args.command == "admin":
        return _admin(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
