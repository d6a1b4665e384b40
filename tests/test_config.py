"""Configuration: the example file documents every key; bad keys are named and exit with 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
import typing

import pytest

from sonoshot.cli import main
from sonoshot.config import Config, ConfigError, parse_config
from tests.conftest import REPO

EXAMPLE = REPO / "sonoshot.example.toml"


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        name = f"{prefix}{f.name}"
        out += _keys(tp, f"{name}.") if dataclasses.is_dataclass(tp) else [name]
    return out


def test_example_file_is_the_defaults():
    assert parse_config(tomllib.loads(EXAMPLE.read_text())) == Config()


@pytest.mark.parametrize("key", _keys(Config))
def test_example_file_documents_every_key(key):
    section, _, name = key.rpartition(".")
    text = EXAMPLE.read_text()
    assert f"[{section}]" in text or f"[[{section}]]" in text or f"# {section}" in text, section
    line = next((line for line in text.splitlines() if line.lstrip("# ").startswith(f"{name} =")
                 or line.startswith(f"# {key}:")), None)
    assert line is not None, f"{key} is not in {EXAMPLE.name}"


@pytest.mark.parametrize(("table", "key", "expected"), [
    ({"network": {"port": "eleven"}}, "network.port", "expected an integer"),
    ({"network": {"port": 70000}}, "network.port", "from 1 to 65535"),
    ({"network": {"prot": 104}}, "network.prot", "unknown key"),
    ({"netwrk": {}}, "netwrk", "unknown key"),
    ({"storage": {"fsync": "yes"}}, "storage.fsync", "true or false"),
    ({"logging": {"level": "LOUD"}}, "logging.level", "one of"),
    ({"detector": {"study_aggregation": "median"}}, "detector.study_aggregation", "one of"),
    ({"network": {"allowed_calling_ae_titles": "PACS"}}, "network.allowed_calling_ae_titles", "a list of"),
    ({"network": {"ae_title": "A_TITLE_FAR_TOO_LONG"}}, "network.ae_title", "1 to 16 characters"),
    ({"delivery": {"destinations": [{"name": "pacs", "ae_title": "PACS"}]}}, "delivery.destinations[0].host",
     "non-empty"),
    ({"network": {"tls": {"certificate": "c.pem"}}}, "network.tls.private_key", "required"),
    ({"routing": {"rules": [{"name": "x", "action": "drop"}]}}, "routing.rules.action", "one of"),
    ({"network": {"max_pdu_size": 1000}}, "network.max_pdu_size", "0 (unlimited) or at least 4096"),
    ({"network": {"max_pending": 4, "max_pending_per_address": 8}}, "network.max_pending", "at least"),
    ({"network": {"request_timeout_s": 0}}, "network.request_timeout_s", "from 0.1 to 600"),
    ({"http": {"echo_interval_s": 0.5}}, "http.echo_interval_s", "from 1 to 86400"),
])
def test_bad_values_name_the_key(table, key, expected):
    with pytest.raises(ConfigError) as raised:
        parse_config(table)
    assert raised.value.key == key
    assert expected in str(raised.value)


def test_cli_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[completion]\nquiet_period = 10\n")
    assert main(["--config", str(bad), "serve"]) == 2
    assert "completion.quiet_period" in capsys.readouterr().err


def test_serve_process_exits_2_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\nport = 0\n")
    result = subprocess.run([sys.executable, "-m", "sonoshot", "--config", str(bad), "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "network.port" in result.stderr


def test_serve_refuses_to_start_without_a_key(tmp_path):
    config = tmp_path / "sonoshot.toml"
    config.write_text(f'[deid]\nkey_file = "{tmp_path / "missing.key"}"\n[http]\nenabled = false\n'
                      f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n')
    result = subprocess.run([sys.executable, "-m", "sonoshot", "--config", str(config), "serve"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "key" in result.stderr.lower()


def test_unreadable_config_file_is_named(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml"), "serve"]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_make_serve_passes_the_demo_configuration():
    """`make serve` runs with deploy/demo.toml: valid, and naming the built-in demo detector."""
    makefile = (REPO / "Makefile").read_text()
    assert "SERVE_CONFIG ?= deploy/demo.toml" in makefile
    assert "sonoshot --config $(SERVE_CONFIG) serve" in makefile
    with open(REPO / "deploy" / "demo.toml", "rb") as f:
        config = parse_config(tomllib.load(f))
    assert config.detector.bundle == "demo"
    assert config.report.key_image and config.report.not_analysed
