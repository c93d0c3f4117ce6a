"""The call signalling protocol's contract (signalling/contract.py,
docs/protocol.schema.json, docs/protocol.md): the schema file is the code's,
every client frame the schema allows the server takes, the refusals the
docs list are the ones the server sends and no others, and a client may ask
for a protocol version.

That every frame the server sends keeps the contract is checked as it goes
out, in every test (tests/conftest.py, ``_frames_keep_the_contract``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from signalling import contract, errors, protocol
from tests.signalling.test_client_call import Call, call, loopback_aiortc  # noqa: F401
from wadud_client.call import CallClient
from wadud_client.errors import RequestFailed

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "protocol.schema.json"
DOC = ROOT / "docs" / "protocol.md"


def test_the_schema_file_is_the_codes() -> None:
    """docs/protocol.schema.json is `python -m signalling.contract`'s output:
    run that and commit the file when a frame changes."""
    assert json.loads(SCHEMA.read_text()) == json.loads(json.dumps(contract.schema()))


def test_the_schema_is_a_valid_schema_naming_every_frame() -> None:
    doc = contract.schema()
    jsonschema.Draft202012Validator.check_schema(doc)
    client = {ref["$ref"].rsplit("/", 1)[1] for ref in doc["client"]["oneOf"]}
    assert len(client) == len(set(protocol.TYPES)), "a client frame the schema lacks"
    server = doc["server"]["discriminator"]["mapping"]
    assert set(server) == set(contract.SERVER_FRAMES)


def _examples() -> list[dict[str, Any]]:
    """Every frame in docs/protocol.md's examples of the calls protocol:
    the one-line JSON objects with a ``type`` in its code blocks."""
    text = DOC.read_text()
    calls = text[text.index("## Calls (signalling)") :]
    found = []
    for block in re.findall(r"```json\n(.*?)```", calls, re.S):
        for chunk in re.split(r"\n(?=\{)", block.strip()):
            frame = json.loads(chunk)
            if isinstance(frame, dict) and "type" in frame:
                found.append(frame)
    return found


def test_every_example_in_the_docs_keeps_the_contract() -> None:
    """Each worked example is a frame the schema allows: a client's, which
    the server parses, or a server's."""
    doc = contract.schema()
    defs = doc["$defs"]
    examples = _examples()
    assert len(examples) >= 20
    seen = set()
    for frame in examples:
        kind = frame["type"]
        server = contract.SERVER_FRAMES.get(kind)
        as_server = server is not None and jsonschema.Draft202012Validator(
            {"$defs": defs, **defs[server.__name__]}
        ).is_valid(frame)
        as_client = False
        if kind in protocol.TYPES:
            try:
                protocol.parse(json.dumps(frame))
                as_client = True
            except protocol.ProtocolError:
                pass
        assert as_client or as_server, frame
        seen.add(kind)
    # The examples show every exchange: each client frame at least once.
    assert set(protocol.TYPES) - seen == set()


# -- refusals and codes ---------------------------------------------------------


def _documented_refusals() -> dict[str, int]:
    """The table under "Refusals are `error` frames" in docs/protocol.md."""
    text = DOC.read_text()
    start = text.index("Refusals are `error` frames")
    table = text[start : text.index("\n\n", text.index("| code | when | close |", start))]
    rows = re.findall(r"^\| `([a-z_-]+)` \|.*\| (\d{4}) \|$", table, re.M)
    return {code: int(close) for code, close in rows}


def test_every_refusal_is_documented_and_every_documented_one_is_sent() -> None:
    """The docs' table of refusals and the errors the server closes with
    are the same codes with the same close codes: a refusal the server
    never sends, or one it sends that the table lacks, fails here."""
    sent = {r["code"]: r["close"] for r in contract.refusals()}
    assert _documented_refusals() == sent


def test_every_server_frame_is_documented() -> None:
    text = DOC.read_text()
    missing = [kind for kind in contract.SERVER_FRAMES if f"| `{kind}`" not in text]
    assert missing == []


def test_every_close_code_is_one_the_server_uses() -> None:
    used = {value for name, value in vars(errors).items() if name.startswith("CLOSE_")} | {1013}
    assert {c["code"] for c in contract.schema()["x-close-codes"]} == used


# -- versions -------------------------------------------------------------------


async def test_joined_says_the_protocol_server_codecs_and_features(
    call: Call,  # noqa: F811 - the fixture
) -> None:
    client = await call.join("room-contract", "dr", role="doctor", admin=True)
    joined = next(e.data for e in client.history if e.type == "joined")
    assert joined["protocol"] == 1
    assert joined["server"].startswith("wadud/")
    assert joined["codecs"] == {"audio": ["opus"], "video": ["VP8", "H264"]}
    assert "simulcast" in joined["features"]


async def test_a_client_may_ask_for_a_protocol_version(
    call: Call,  # noqa: F811 - the fixture
) -> None:
    # The Python client asks for the version it speaks.
    joined = await call.join("room-versions", "dr", role="doctor", admin=True)
    assert joined.participant_id
    token = call.token("room-versions", "pt-2")
    client = CallClient(call.url, token, label="v2")
    call.clients.append(client)
    await client.socket.connect()
    with pytest.raises(RequestFailed) as exc:
        await client.request("join", token=token, protocol=2)
    refused = exc.value
    assert (refused.code, refused.fatal) == ("unsupported-protocol", True)
    assert refused.frame["supported"] == [1]
    await client.wait_until(lambda: client.close_code is not None, within=5)
    assert client.close_code == 4426
