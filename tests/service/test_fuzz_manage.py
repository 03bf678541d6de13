"""The handlers of issue 18 under the same fuzzing: whatever a client sends
to ids 30-49, the service never raises and answers each request once."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterchat.protocol import codec
from tests.service.test_fuzz_handlers import _run

ids = st.one_of(st.integers(min_value=-2, max_value=4), st.integers(), st.text(max_size=3))
requests = st.fixed_dictionaries(
    {"msgid": st.integers(min_value=28, max_value=50)},
    optional={
        "groupid": ids,
        "userid": ids,
        "friendid": ids,
        "role": st.sampled_from(["admin", "normal", "creator", "", 1]),
        "groupname": st.one_of(st.none(), st.text(max_size=60)),
        "groupdesc": st.one_of(st.none(), st.text(max_size=60)),
    },
).map(lambda d: codec.dumps(d).encode())
setup = st.just(b'{"msgid":8,"groupname":"g","groupdesc":""}')


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(setup, requests), min_size=1, max_size=8))
def test_manage_requests_get_one_reply_each_and_never_raise(frames: list[bytes]) -> None:
    asyncio.run(_run(frames))
