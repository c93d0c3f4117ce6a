"""The bridge's settings (sip/node/settings.py): a config that works is
taken as it is, one that does not names the setting at fault."""

from __future__ import annotations

import dataclasses

import pytest

from sip.node.settings import bridge_config
from wadud.config import Settings
from wadud.errors import ConfigError

TRUNK = {"clinic": {"networks": ["198.51.100.0/28"]}}


def bridge(**changes: object) -> Settings:
    base = Settings(secret_key="k" * 32, sip_listen="127.0.0.1:5060", sip_trunks=TRUNK)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_no_listen_address_is_no_bridge() -> None:
    assert bridge_config(bridge(sip_listen="")) is None


def test_the_opus_complexity_is_carried_and_checked() -> None:
    config = bridge_config(bridge())
    assert config is not None and config.opus_complexity == 1
    config = bridge_config(bridge(sip_opus_complexity=10))
    assert config is not None and config.opus_complexity == 10
    for wrong in (-1, 11):
        with pytest.raises(ConfigError, match="sip_opus_complexity"):
            bridge_config(bridge(sip_opus_complexity=wrong))


def test_a_bridge_without_trunks_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[sip.trunks.NAME\]"):
        bridge_config(bridge(sip_trunks={}))
