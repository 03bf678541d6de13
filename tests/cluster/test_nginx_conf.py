"""The nginx configuration we print is one nginx accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clusterchat.cluster.nginx import NGINX, nginx_command, standalone_conf


def test_nginx_conf_command_prints_a_stream_block() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "clusterchat", "cluster", "nginx-conf",
         "127.0.0.1:6000", "127.0.0.1:6002", "--listen", "8000"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert out.startswith("stream {")
    assert "server 127.0.0.1:6000 " in out and "server 127.0.0.1:6002 " in out
    assert "listen 8000;" in out and "tcp_nodelay on;" in out


def test_standalone_conf_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        standalone_conf(["127.0.0.1:6000", "127.0.0.1:6001"], "127.0.0.1:8000", tmp_path)
    )
    res = subprocess.run(
        [*nginx_command(conf, tmp_path, NGINX), "-t"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "syntax is ok" in res.stderr
