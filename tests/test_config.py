from pathlib import Path

import pytest

from pipeline.config import load_settings


def test_defaults_without_file_or_env() -> None:
    s = load_settings(env={})
    assert s.gateway.port == 8080
    assert s.store.url == ""
    assert s.processors.dwell.min_duration_s > 0


def test_toml_then_env_override(tmp_path: Path) -> None:
    cfg = tmp_path / "ft.toml"
    cfg.write_text('[gateway]\nport = 9000\n[dwell]\nmin_duration_s = 240\n[store]\nurl = "x"\n')
    s = load_settings(cfg, env={"FIELDTRACK_GATEWAY__PORT": "9100"})
    assert s.gateway.port == 9100  # env beats file
    assert s.processors.dwell.min_duration_s == 240.0
    assert s.store.url == "x"


def test_aliases_and_booleans() -> None:
    s = load_settings(
        env={
            "FIELDTRACK_CLICKHOUSE_URL": "http://default:@localhost:8123",
            "FIELDTRACK_PRIVACY__ENABLED": "false",
        }
    )
    assert s.store.url == "http://default:@localhost:8123"
    assert s.processors.privacy.enabled is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FIELDTRACK_GATEWAY__PORT": "eighty"}, "expected int"),
        ({"FIELDTRACK_GATEWAY__NOPE": "1"}, "unknown setting 'nope'"),
        ({"FIELDTRACK_NOSECTION__X": "1"}, "unknown section"),
        ({"FIELDTRACK_PRIVACY__ENABLED": "maybe"}, "expected a boolean"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(env=env)


def test_unknown_toml_section(tmp_path: Path) -> None:
    cfg = tmp_path / "ft.toml"
    cfg.write_text("[nonsense]\na = 1\n")
    with pytest.raises(ValueError, match=r"unknown section \[nonsense\]"):
        load_settings(cfg, env={})


def test_every_processor_setting_is_documented_and_the_reference_is_current() -> None:
    from pathlib import Path

    from pipeline.config import processor_reference, undocumented_settings

    assert undocumented_settings() == []
    docs = Path(__file__).resolve().parent.parent / "docs" / "processors.md"
    assert docs.read_text() == processor_reference() + "\n", (
        "docs/processors.md is stale: run `fieldtrack docs`"
    )
