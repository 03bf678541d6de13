"""nginx configuration for a row of clusterchat nodes: a stream (TCP) block
for chat clients and an http block for browsers (the web client, WebSocket)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

NGINX = "/usr/sbin/nginx"
#: Debian ships the stream module as a dynamic module (libnginx-mod-stream).
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def _servers(upstreams: Sequence[str]) -> str:
    return "\n".join(f"        server {u} max_fails=3 fail_timeout=10s;" for u in upstreams)


def _tls(listen: str, cert: str | None, key: str | None) -> tuple[str, str]:
    """The listen address and the lines that make nginx terminate TLS (none without a cert)."""
    if not cert:
        return listen, ""
    return listen + " ssl", (
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key or cert};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
    )


def stream_block(
    upstreams: Sequence[str],
    listen: str,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> str:
    """The part to paste into an nginx.conf of your own. With a certificate,
    nginx terminates TLS and talks plain TCP to the nodes."""
    servers = _servers(upstreams)
    listen, tls = _tls(listen, tls_cert, tls_key)
    return f"""stream {{
    upstream clusterchat {{
{servers}
    }}
    server {{
        listen {listen};
{tls}        proxy_pass clusterchat;
        # The client's real address, for the nodes' per-address limits: they
        # must trust this nginx (clusterchat server --trusted-proxy ADDRESS).
        proxy_protocol on;
        # A node that refuses a client says why and half-closes: nginx passes the
        # FIN on and keeps reading the client, so the reason is not lost to a reset.
        proxy_half_close on;
        proxy_connect_timeout 1s;
        # chat connections idle for long: the client pings, nginx must not cut them
        proxy_timeout 1h;
        tcp_nodelay on;
    }}
}}
"""


def http_block(
    upstreams: Sequence[str],
    listen: str,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    run_dir: Path | None = None,
) -> str:
    """Browsers reach any node's HTTP port (--http-port) through one address:
    the web client's files and the WebSocket at /ws. ``Host`` is passed on, so
    the node's same-origin check sees the address the browser used, and
    X-Forwarded-For, so its per-address limits see the browser's address."""
    servers = _servers(upstreams)
    listen, tls = _tls(listen, tls_cert, tls_key)
    own = ""
    if run_dir is not None:  # a standalone nginx keeps its files in run_dir
        own = (
            f"    access_log {run_dir / 'nginx-access.log'};\n"
            f"    client_body_temp_path {run_dir / 'tmp-body'};\n"
            f"    proxy_temp_path {run_dir / 'tmp-proxy'};\n"
            f"    fastcgi_temp_path {run_dir / 'tmp-fastcgi'};\n"
            f"    uwsgi_temp_path {run_dir / 'tmp-uwsgi'};\n"
            f"    scgi_temp_path {run_dir / 'tmp-scgi'};\n"
        )
    return f"""http {{
{own}    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream clusterchat_web {{
{servers}
    }}
    server {{
        listen {listen};
{tls}        location / {{
            proxy_pass http://clusterchat_web;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            # The client's real address, for the nodes' per-address limits: believed
            # only from a --trusted-proxy peer, which takes the rightmost hop that is
            # not itself trusted (what a client types to its left is ignored).
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 1s;
            # a chat WebSocket idles for long; the node pings it within its idle timeout
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
        }}
    }}
}}
"""


def standalone_conf(
    upstreams: Sequence[str],
    listen: str,
    run_dir: Path,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    http_upstreams: Sequence[str] = (),
    http_listen: str = "",
) -> str:
    """A whole nginx.conf that runs in the foreground with everything in run_dir."""
    module = f"load_module {STREAM_MODULE};\n" if STREAM_MODULE.exists() else ""
    web = http_block(http_upstreams, http_listen, run_dir=run_dir) if http_upstreams else ""
    return f"""# written by `clusterchat cluster up`
{module}daemon off;
worker_processes 1;
pid {run_dir / "nginx.pid"};
error_log {run_dir / "nginx-error.log"} notice;
events {{
    worker_connections 16384;
}}
{stream_block(upstreams, listen, tls_cert, tls_key)}{web}"""


def nginx_command(conf: Path, run_dir: Path, nginx: str = NGINX) -> list[str]:
    return [nginx, "-c", str(conf), "-p", str(run_dir), "-e", str(run_dir / "nginx-error.log")]
