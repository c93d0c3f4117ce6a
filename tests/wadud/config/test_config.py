from __future__ import annotations

import re
from pathlib import Path

import pytest

from wadud import config
from wadud.config import sources
from wadud.errors import ConfigError

DOC = Path(__file__).parents[3] / "docs" / "configuration.md"


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('port = 9000\n[database]\nurl = "postgresql://file/db"\npool_max = 7\n')
    s = sources.load(file=f, env={})
    assert (s.port, s.database_url, s.database_pool_max) == (9000, "postgresql://file/db", 7)
    s = sources.load(file=f, env={"WADUD_PORT": "9100", "WADUD_DATABASE_MIGRATE": "off"})
    assert s.port == 9100 and s.database_migrate is False
    s = sources.load(file=f, env={"WADUD_PORT": "9100"}, overrides={"port": 9200, "host": None})
    assert s.port == 9200 and s.host == "127.0.0.1"
    s = sources.load(env={"WADUD_PAYMENTS_CARD_WEBHOOK_SECRETS": "a, b"})
    assert s.payments_card_webhook_secrets == ["a", "b"]


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"WADUD_PORTT": "1"}, "unknown setting"),
        ({"WADUD_PORT": "eighty"}, "not a valid"),
        ({"WADUD_DATABASE_MIGRATE": "maybe"}, "not a valid"),
        ({"WADUD_LOG_FORMAT": "xml"}, "log_format"),
        ({"WADUD_AUTH_HASH_MEMORY_KIB": "16"}, "auth_hash_memory_kib"),
        ({"WADUD_CALL_ALLOWED_ORIGINS": "https://clinic.example/visit"}, "call_allowed_origins"),
        # Compared with the Origin header as written: only its browser form.
        ({"WADUD_CALL_ALLOWED_ORIGINS": "https://Clinic.example:443"}, "https://clinic.example"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        sources.load(env=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text("[database]\nulr = 'x'\n")
    with pytest.raises(ConfigError, match="database_ulr"):
        sources.load(file=f, env={})


def test_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    s = config.Settings(data_dir=tmp_path)
    a, b = s.with_secret(), s.with_secret()
    assert a.secret_key and a.secret_key == b.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"`WADUD_([A-Z0-9_]+)`", text))
    fields = {
        name.upper() for name, f in config.FIELDS.items() if f.metadata.get("env") is not False
    }
    assert fields - documented == set(), "settings missing from docs/configuration.md"
    assert documented - fields - {"CONFIG"} == set(), "docs name settings that do not exist"


def test_turn_table_is_shared_with_the_relay(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text(
        '[turn]\nsecrets = ["s1", "s2"]\nurls = ["turn:t.example:3478"]\n'
        'relay_ips = ["203.0.113.5"]\nlisten_udp = ["0.0.0.0:3478"]\n'
    )
    s = sources.load(file=f, env={})
    assert s.turn_secrets == ["s1", "s2"]
    assert s.turn_urls == ["turn:t.example:3478"]
    assert s.turn_relay == {"relay_ips": ["203.0.113.5"], "listen_udp": ["0.0.0.0:3478"]}
    # The relay's keys are the relay's to check (tests/turn/test_turn_cli.py).
    f.write_text("[turn]\nrelay_ipz = ['x']\n")
    assert sources.load(file=f, env={}).turn_relay == {"relay_ipz": ["x"]}
    with pytest.raises(ConfigError, match="unknown setting"):
        sources.load(env={"WADUD_TURN_RELAY": "x"})


def test_the_example_configuration_loads() -> None:
    """deploy/wadud.example.toml is what operators copy: every key in it must
    be a setting in its section (a key under the wrong table is refused)."""
    example = Path(__file__).parents[3] / "deploy" / "wadud.example.toml"
    s = sources.load(file=example, env={})
    assert s.region == "pk"
    assert s.media_region_distances.startswith("pk-ae=")
