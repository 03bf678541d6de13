from typing import Any

from clusterchat.client.session import ChatClient
from clusterchat.protocol import codec


def test_a_redelivered_message_is_shown_once() -> None:
    shown: list[dict[str, Any]] = []
    client = ChatClient("127.0.0.1", 1, on_push=shown.append, on_status=lambda _: None)
    msg = {"msgid": 6, "id": 1, "name": "a", "toid": 2, "msg": "hi", "mid": "n-1", "ts": 1}
    for _ in range(3):
        client._dispatch(codec.dumps(msg).encode())
    client._dispatch(codec.dumps({**msg, "mid": "n-2"}).encode())
    assert [m["mid"] for m in shown] == ["n-1", "n-2"]
