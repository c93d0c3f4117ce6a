"""The tracks a publish offer sends, with what our answer accepted for each.

One :class:`OfferedTrack` per m= section that sends media to the worker,
read from the offer (SSRCs, RTX pairs, RFC 8853 simulcast RIDs) and from our
answer (the codec, RTX, RED and header extensions it kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from rtc.sdp.attributes import Codec, Direction
from rtc.sdp.session import SessionDescription

__all__ = ["OfferedTrack", "parse_tracks"]


@dataclass(frozen=True, slots=True)
class OfferedTrack:
    """A publish offer's m= section that carries a track, as answered."""

    mid: str
    kind: Literal["audio", "video"]
    ssrc: int
    rtx_ssrc: int | None
    codec: Codec
    rtx: Codec | None
    rtx_payload_types: dict[int, int]
    extensions: dict[str, int]
    nack: bool
    fir: bool
    rids: tuple[str, ...] = ()
    """RFC 8853 simulcast without a=ssrc: the layers' RIDs (``ssrc`` is 0)."""
    red: Codec | None = None
    """Opus RED (RFC 2198) the answer accepted over ``codec``."""


# --- the control side -----------------------------------------------------------------


def parse_tracks(offer: SessionDescription, answered: SessionDescription) -> list[OfferedTrack]:
    """The tracks a publish offer sends, with what our answer accepted for each."""
    out: list[OfferedTrack] = []
    for offered, section in zip(offer.media, answered.media, strict=True):
        if section.port == 0 or section.mid is None:
            continue
        if (offered.direction or Direction.SENDRECV) not in (
            Direction.SENDRECV,
            Direction.SENDONLY,
        ):
            continue
        if offered.kind not in ("audio", "video"):
            continue
        media = [c for c in section.codecs if not c.is_named("rtx") and not c.is_named("red")]
        if not media:
            continue
        codec = media[0]
        red = next((c for c in section.codecs if c.is_named("red")), None)
        fid = offered.fid_pairs()
        rtx_ssrcs = set(fid.values())
        ssrcs = [s.ssrc for s in offered.ssrcs if s.ssrc not in rtx_ssrcs]
        rids = _send_rids(section.simulcast) if offered.kind == "video" else ()
        if rids:
            # RFC 8853 simulcast: SSRCs are learnt from the RID header
            # extension (RFC 8852) of the first packets, not from a=ssrc.
            ssrcs = [0]
        if not ssrcs:
            continue
        ssrc = ssrcs[0]
        rtx = section.rtx_for(codec.payload_type)
        rtx_ssrc = fid.get(ssrc) if rtx is not None and ssrc else None
        feedback = {(f.type, f.parameter) for f in codec.feedback}
        out.append(
            OfferedTrack(
                mid=section.mid,
                kind=cast(Literal["audio", "video"], offered.kind),
                ssrc=ssrc,
                rtx_ssrc=rtx_ssrc,
                codec=codec,
                rtx=rtx if rtx_ssrc is not None or rids else None,
                rtx_payload_types={
                    c.payload_type: c.apt
                    for c in section.codecs
                    if c.is_named("rtx") and c.apt is not None
                },
                extensions={e.uri: e.id for e in section.extmaps},
                nack=("nack", None) in feedback,
                fir=("nack", "pli") not in feedback and ("ccm", "fir") in feedback,
                rids=rids,
                red=red if offered.kind == "audio" else None,
            )
        )
    return out


def _send_rids(simulcast: str | None) -> tuple[str, ...]:
    """The RIDs a publisher sends, from our answer's ``a=simulcast:recv ...``
    (RFC 8853 section 5.1: alternatives split by ``,``, streams by ``;``, a
    ``~`` prefix marks one paused at first). One RID is no simulcast."""
    if not simulcast:
        return ()
    parts = simulcast.split()
    for direction, streams in zip(parts[::2], parts[1::2], strict=False):
        if direction == "recv":
            rids = tuple(s.split(",")[0].lstrip("~") for s in streams.split(";") if s)
            return rids if len(rids) > 1 else ()
    return ()
