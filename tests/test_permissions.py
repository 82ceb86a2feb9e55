from __future__ import annotations

import pytest

from mesh.client import Mesh
from mesh.errors import ConnectFailed, PublishNotPermitted
from mesh.events import Event
from mesh.server import NatsServer


@pytest.mark.parametrize(
    ("service", "allowed", "refused"),
    [
        (
            "market-data",
            Event(event_type="PRICE_UPDATE", symbol="AAPL"),
            Event(event_type="MARGIN_CALL", account="ACC1"),
        ),
        (
            "portfolio",
            Event(event_type="PNL_CHANGE", account="ACC1"),
            Event(event_type="ORDER_PLACED", symbol="AAPL", account="ACC1"),
        ),
        (
            "trading",
            Event(event_type="RISK_LIMIT_BREACH", account="ACC1"),
            Event(event_type="PRICE_UPDATE", symbol="AAPL"),
        ),
    ],
)
async def test_a_service_may_publish_only_its_own_domains(
    nats_server: NatsServer, service: str, allowed: Event, refused: Event
) -> None:
    async with Mesh.connect(
        nats_server.url, service=service, user=service, password=f"{service}-dev"
    ) as mesh:
        assert await mesh.publish(allowed) > 0
        with pytest.raises(PublishNotPermitted) as info:
            await mesh.publish(refused)
        message = str(info.value)
        assert "refused" in message
        assert service in message
        assert f".{refused.event_type}." in message
        # The connection stays usable after a refusal.
        assert await mesh.publish(allowed) > 0


async def test_wrong_password_is_refused(nats_server: NatsServer) -> None:
    with pytest.raises(ConnectFailed, match=r"(?i)authorization.*check nats\.user"):
        async with Mesh.connect(nats_server.url, user="trading", password="wrong"):
            pass
