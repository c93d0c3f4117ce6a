"""The bridge's settings (``[sip]``, docs/phone.md) read into one checked value.

The ground's :class:`~wadud.config.Settings` holds the raw values; this
module reads them once, when the role starts, and says in a
:class:`~wadud.errors.ConfigError` what is wrong before any socket opens.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip.calls.agent import Trunk
from sip.calls.ivr import LANGUAGES
from wadud.config import Settings
from wadud.errors import ConfigError

__all__ = ["BridgeConfig", "bridge_config"]

_TRUNK_KEYS = frozenset(
    {"networks", "language", "max_calls", "username", "password", "outbound", "dial_allow"}
)
#: A number the bridge may call: E.164, as users' phones are kept.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_WILDCARDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """What the bridge runs with (see the ``sip_*`` settings)."""

    host: str
    port: int
    public_host: str
    media_host: str
    rtp_ports: range
    trunks: tuple[Trunk, ...]
    language: str
    prompts_dir: Path | None
    room_url: str
    admit_wait: float
    opus_complexity: int


def _address(text: str, what: str = "sip_listen") -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} = {text!r}: want HOST:PORT, e.g. 0.0.0.0:5060")
    return host.strip("[]"), int(port)


def _ports(text: str) -> range:
    first, sep, last = text.partition("-")
    if not (sep and first.strip().isdigit() and last.strip().isdigit()):
        raise ConfigError(f"sip_rtp_ports = {text!r}: want FIRST-LAST, e.g. 20000-29999")
    low, high = int(first), int(last)
    if not 1024 <= low < high <= 65535:
        raise ConfigError(f"sip_rtp_ports = {text!r}: want 1024 <= FIRST < LAST <= 65535")
    return range(low, high + 1)


def _trunk(name: str, table: Any) -> Trunk:
    where = f"[sip.trunks.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table (networks, language, max_calls)")
    unknown = set(table) - _TRUNK_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    username, password = table.get("username"), table.get("password")
    if (username is None) != (password is None) or not all(
        v is None or (isinstance(v, str) and v) for v in (username, password)
    ):
        raise ConfigError(f"{where}: digest wants both username and password, neither empty")
    networks = table.get("networks", [])
    if isinstance(networks, str):
        networks = [networks]
    if not isinstance(networks, list) or not all(isinstance(n, str) for n in networks):
        raise ConfigError(f"{where}: networks = the CIDRs the trunk sends from")
    if not networks and username is None:
        raise ConfigError(
            f"{where}: say who the trunk is: networks (the CIDRs it sends from),"
            " or a digest username and password, or both"
        )
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: {network!r} is not a network (CIDR)") from None
    language = table.get("language")
    if language is not None and language not in LANGUAGES:
        raise ConfigError(f"{where}: language = {language!r}; one of {', '.join(LANGUAGES)}")
    max_calls = table.get("max_calls", 30)
    if not isinstance(max_calls, int) or isinstance(max_calls, bool) or max_calls < 1:
        raise ConfigError(f"{where}: max_calls = {max_calls!r}; a whole number, 1 or more")
    outbound = table.get("outbound")
    address = None
    if outbound is not None:
        if not isinstance(outbound, str):
            raise ConfigError(f"{where}: outbound = HOST:PORT the trunk takes calls at")
        address = _address(outbound, f"{where} outbound")
    allow = table.get("dial_allow", [])
    if not isinstance(allow, list) or not all(
        isinstance(n, str) and _E164.fullmatch(n) for n in allow
    ):
        raise ConfigError(f"{where}: dial_allow = numbers in E.164 (+92...), a list")
    return Trunk(
        name, tuple(networks), language, max_calls, username, password, address, tuple(allow)
    )


def bridge_config(settings: Settings) -> BridgeConfig | None:
    """The bridge's configuration; None where ``sip_listen`` is empty (no
    bridge). Raises ConfigError naming the setting that is wrong."""
    if not settings.sip_listen.strip():
        return None
    host, port = _address(settings.sip_listen)
    public = settings.sip_public_host.strip() or ("127.0.0.1" if host in _WILDCARDS else host)
    if settings.sip_language not in LANGUAGES:
        raise ConfigError(
            f"sip_language = {settings.sip_language!r}; one of {', '.join(LANGUAGES)}"
        )
    trunks = tuple(_trunk(name, table) for name, table in settings.sip_trunks.items())
    if not trunks:
        raise ConfigError(
            "the phone bridge takes calls only from its trunks: add a [sip.trunks.NAME]"
            " table with the networks your SIP trunk or PBX sends from (docs/phone.md)"
        )
    if settings.sip_admit_wait <= 0:
        raise ConfigError("sip_admit_wait must be more than 0 seconds")
    if not 0 <= settings.sip_opus_complexity <= 10:
        raise ConfigError(
            f"sip_opus_complexity = {settings.sip_opus_complexity}; libopus takes 0 to 10"
        )
    prompts = Path(settings.sip_prompts_dir) if settings.sip_prompts_dir.strip() else None
    if prompts is not None and not prompts.is_dir():
        raise ConfigError(f"sip_prompts_dir = {str(prompts)!r} is not a folder")
    room_url = settings.sip_room_url.strip() or settings.base_url + "/ws"
    return BridgeConfig(
        host=host or "0.0.0.0",
        port=port,
        public_host=public,
        media_host=settings.sip_media_host.strip() or host or "0.0.0.0",
        rtp_ports=_ports(settings.sip_rtp_ports),
        trunks=trunks,
        language=settings.sip_language,
        prompts_dir=prompts,
        room_url=room_url,
        admit_wait=settings.sip_admit_wait,
        opus_complexity=settings.sip_opus_complexity,
    )
