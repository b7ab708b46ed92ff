from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, Settings, load_settings


def test_defaults_come_from_the_bundled_toml(test_settings: Settings) -> None:
    assert test_settings.index.collection == "works"
    assert test_settings.resolved_database_url().startswith("sqlite:///")
    assert test_settings.embedded_broker


def test_environment_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch, test_settings: Settings) -> None:
    monkeypatch.setenv("ARTWATCH_MATCHING__BATCH_SIZE", "7")
    monkeypatch.setenv("ARTWATCH_BROKER_URL", "redis://127.0.0.1:6379/3")
    s = load_settings()
    assert s.matching.batch_size == 7
    assert not s.embedded_broker


def test_user_toml_file_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_settings: Settings
) -> None:
    f = tmp_path / "artwatch.toml"
    f.write_text('[web]\nport = 9123\n')
    monkeypatch.setenv("ARTWATCH_CONFIG", str(f))
    assert load_settings().web.port == 9123


@pytest.mark.parametrize("var", ["ARTWATCH_NOPE", "ARTWATCH_MATCHING__TRESHOLD"])
def test_unknown_environment_key_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, test_settings: Settings, var: str
) -> None:
    monkeypatch.setenv(var, "1")
    with pytest.raises(ConfigError, match=var):
        load_settings()


def test_unknown_key_in_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_settings: Settings
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[crawler]\nuser_agnet = "x"\n')
    monkeypatch.setenv("ARTWATCH_CONFIG", str(f))
    with pytest.raises(ConfigError, match=r"unknown configuration key: crawler\.user_agnet"):
        load_settings()


def test_bad_value_names_the_key(monkeypatch: pytest.MonkeyPatch, test_settings: Settings) -> None:
    monkeypatch.setenv("ARTWATCH_WEB__PORT", "eighty")
    with pytest.raises(ConfigError, match=r"web\.port"):
        load_settings()
