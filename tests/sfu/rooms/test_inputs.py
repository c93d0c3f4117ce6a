"""The worker cores' one input verb (sfu/rooms/inputs.py): each core's table takes
every input it declares, and nothing else."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pytest

from rtc.dtls import DtlsCertificate
from sfu.errors import SfuError, UnknownInput
from sfu.layers.choice import Layers
from sfu.negotiation.negotiator import Negotiator
from sfu.negotiation.transports import Transports
from sfu.node.links import Links
from sfu.rooms.inputs import (
    Core,
    Input,
    LayersInput,
    LeaveRoom,
    LinksInput,
    NegotiatorInput,
    SetAudioOnly,
    TransportsInput,
)
from tests.sfu.negotiation.test_negotiation import NOW, negotiator


@pytest.mark.parametrize(
    ("core", "declared"),
    [
        (Negotiator, NegotiatorInput),
        (Transports, TransportsInput),
        (Links, LinksInput),
        (Layers, LayersInput),
    ],
)
def test_each_core_takes_every_input_it_declares(core: type[Core], declared: object) -> None:
    assert set(core.handlers) == set(typing.get_args(declared))
    for kind, handler in core.handlers.items():
        # Each handler is the core's own function, named for what it takes.
        assert handler.__qualname__.startswith(f"{core.__name__}._handle_"), (kind, handler)


@dataclass(frozen=True, slots=True)
class Stray(Input[None]):
    """An input no core takes."""


def test_an_input_the_core_does_not_take_is_a_typed_error(certificate: DtlsCertificate) -> None:
    core = negotiator(certificate)
    with pytest.raises(UnknownInput, match="Negotiator takes no Stray") as caught:
        core.receive(Stray(), NOW)
    assert isinstance(caught.value, SfuError) and isinstance(caught.value, TypeError)
    assert core.take_actions() == []


def test_an_input_of_another_core_is_refused_as_well(certificate: DtlsCertificate) -> None:
    core = negotiator(certificate)
    with pytest.raises(UnknownInput, match="Layers takes no Leave"):
        core.transports.layers.receive(LeaveRoom("room", "alice"), NOW)
    with pytest.raises(UnknownInput, match="Negotiator takes no Leave"):
        core.receive(LeaveRoom("room", "alice"), NOW)
    with pytest.raises(UnknownInput, match="Transports takes no SetAudioOnly"):
        core.transports.receive(SetAudioOnly("room", "alice", True), NOW)
    assert core.tables.rooms == {}
