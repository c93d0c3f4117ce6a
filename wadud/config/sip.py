"""The ``[sip]`` table: the phone bridge (sip/, docs/phone.md).

A base of :class:`wadud.config.Settings`, so a reader still asks
``settings.sip_...``; here to keep the settings' module within the house's
length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wadud.config.fields import setting

__all__ = ["SipSettings"]


@dataclass(frozen=True)
class SipSettings:
    sip_dial_in: str = setting(
        "",
        "The phone number patients and guests call to join a visit by its PIN (as they"
        " dial it, e.g. +92 51 1234567), shown with the link in confirmations and"
        " reminders. Empty: no dial-in offered.",
    )
    sip_listen: str = setting(
        "",
        "HOST:PORT the phone bridge takes SIP on, UDP and TCP (e.g. 0.0.0.0:5060). Empty:"
        " no bridge; set, `wadud serve` runs one and `wadud sip` is the bridge alone.",
    )
    sip_public_host: str = setting(
        "",
        "The address trunks reach the bridge at, for Contact, Via and the SDP (a NAT's"
        " public address). Empty: the listen host (or 127.0.0.1 for a wildcard).",
    )
    sip_media_host: str = setting(
        "", "Address the calls' RTP sockets bind. Empty: the listen host."
    )
    sip_rtp_ports: str = setting(
        "20000-29999",
        "UDP ports for the calls' RTP, FIRST-LAST: two per call (RTP on the even one).",
    )
    sip_trunks: dict[str, Any] = setting(
        {},
        "The clinics' trunks, one [sip.trunks.NAME] table each: `networks` (CIDRs the"
        " trunk sends from), `username` and `password` (digest: its INVITEs must prove"
        " them), either or both; `outbound` (HOST:PORT the trunk takes the calls the"
        " bridge places at) and `dial_allow` (E.164 numbers it may call besides a"
        " visit's patient); `language` (en, ur or ar; absent: the caller picks),"
        " `max_calls` (default 30). An INVITE from no trunk's network, or with wrong"
        " credentials, gets 403.",
        env=False,
    )
    sip_language: str = setting(
        "en", "The prompts' language when a trunk names none and the caller keys none."
    )
    sip_prompts_dir: str = setting(
        "",
        "Folder of the clinic's recorded prompts (LANG/PROMPT.wav, mono 16-bit); the"
        " rest are spoken by espeak-ng. Empty: all spoken.",
    )
    sip_room_url: str = setting(
        "",
        "The signalling WebSocket the bridge joins visits' rooms at (the api's /ws)."
        " Empty: this deployment's public_url + /ws.",
    )
    sip_admit_wait: float = setting(
        600.0,
        "Seconds a caller in the waiting room waits for the doctor to admit them"
        " before the bridge says goodbye.",
    )
    sip_opus_complexity: int = setting(
        1,
        "libopus's complexity (0 to 10) coding each phone's voice for the room: higher"
        " costs more CPU per call for little a phone line's narrowband voice can show.",
    )
