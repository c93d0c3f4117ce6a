"""Origins as clinics list them and browsers send them (wadud/origins.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wadud.origins import MAX_ORIGINS, normalise, normalise_all


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://clinic.example", "https://clinic.example"),
        ("HTTPS://Clinic.Example", "https://clinic.example"),
        ("https://clinic.example:443", "https://clinic.example"),
        ("http://clinic.example:80/", "http://clinic.example"),
        ("https://clinic.example:8443", "https://clinic.example:8443"),
        ("  https://clinic.example  ", "https://clinic.example"),
        ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
        ("http://localhost:9090", "http://localhost:9090"),
        ("https://[0:0::1]:8443", "https://[::1]:8443"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://sub-1.clinic.example:", "https://sub-1.clinic.example"),
    ],
)
def test_origins_are_written_as_browsers_send_them(text: str, origin: str) -> None:
    assert normalise(text) == origin
    assert normalise(origin) == origin


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "clinic.example",
        "//clinic.example",
        "ftp://clinic.example",
        "javascript://clinic.example",
        "https://",
        "https://clinic.example/visit",
        "https://clinic.example/?a=1",
        "https://clinic.example#top",
        "https://user:pw@clinic.example",
        "https://*.clinic.example",
        "https://clinic.example:0",
        "https://clinic.example:65536",
        "https://clinic.example:http",
        "https://clinic_example.com",
        "https://-clinic.example",
        "https://clinic.example.",
        "https://1.2.3",
        "https://[fe80::1%25eth0]",
        "https://" + "a" * 64 + ".example",
        "https://" + ".".join(["a" * 60] * 5),
    ],
)
def test_anything_but_an_origin_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        normalise(text)


def test_a_list_is_normalised_once_each_and_bounded() -> None:
    assert normalise_all(["https://A.example", "https://a.example:443", "http://a.example"]) == [
        "https://a.example",
        "http://a.example",
    ]
    many = [f"https://c{i}.example" for i in range(MAX_ORIGINS)]
    assert normalise_all(many) == many
    with pytest.raises(ValueError, match="at most 20"):
        normalise_all([*many, "https://one-more.example"])


_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    labels=st.lists(_LABEL, min_size=1, max_size=4),
    tld=st.from_regex(r"[a-z]{2,6}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
    slash=st.booleans(),
)
def test_normalising_is_idempotent(
    scheme: str, labels: list[str], tld: str, port: int | None, slash: bool
) -> None:
    text = f"{scheme}://{'.'.join([*labels, tld])}" + (f":{port}" if port else "")
    text += "/" if slash else ""
    once = normalise(text)
    assert normalise(once) == once
    assert once == once.lower() and not once.endswith("/")
    default = ":443" if once.startswith("https://") else ":80"
    assert not once.endswith(default)


@given(st.text(max_size=80))
def test_any_text_is_an_origin_or_a_value_error(text: str) -> None:
    try:
        once = normalise(text)
    except ValueError:
        return
    assert normalise(once) == once
