import dataclasses
from pathlib import Path

import pytest

from tamperaudit.config import SECTIONS, Settings, from_dict, parse_assignment, read_toml, resolve, to_toml
from tamperaudit.errors import UserError


def test_defaults_resolve_without_sources():
    settings = resolve(environ={})
    assert settings.model.name == "qwen2.5-coder-0.5b-instruct"
    assert settings.attack.budgets == (0, 5, 10)
    assert settings.cost.price_per_hour is None


def test_settings_are_frozen_and_resolving_never_changes_a_default():
    changed = resolve(None, {}, {"attack": {"budgets": "0,3", "target_modules": "q_proj,v_proj"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.attack.learning_rate = 1.0  # type: ignore[misc]
    assert isinstance(changed.attack.budgets, tuple) and isinstance(changed.attack.target_modules, tuple)
    assert Settings().attack.budgets == (0, 5, 10)  # the defaults were not written over
    assert resolve(environ={}) == Settings()


def test_sources_apply_in_order_defaults_file_env_flags(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text('[attack]\nlearning_rate = 0.001\nseed = 5\nbatch_size = 3\n')
    env = {"TAMPERAUDIT_ATTACK_SEED": "7", "TAMPERAUDIT_ATTACK_BATCH_SIZE": "6"}
    settings = resolve(config, env, {"attack": {"batch_size": "9"}})
    assert settings.attack.learning_rate == 0.001  # file beats default
    assert settings.attack.seed == 7  # env beats file
    assert settings.attack.batch_size == 9  # flags beat env


def test_unknown_key_in_file_is_an_error(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text("[attack]\nlearning_rat = 0.1\n")
    with pytest.raises(UserError, match="unknown setting 'attack.learning_rat'"):
        resolve(config, {})


def test_unknown_section_and_env_variable_are_errors(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text("[atack]\nseed = 1\n")
    with pytest.raises(UserError, match="unknown section"):
        resolve(config, {})
    with pytest.raises(UserError, match="TAMPERAUDIT_NOPE_X is not a setting"):
        resolve(None, {"TAMPERAUDIT_NOPE_X": "1"})


def test_wrong_types_name_the_setting():
    with pytest.raises(UserError, match="'attack.seed' must be a whole number"):
        resolve(None, {}, {"attack": {"seed": "abc"}})
    with pytest.raises(UserError, match="'attack.keep_adapters' must be true or false"):
        resolve(None, {}, {"attack": {"keep_adapters": "maybe"}})


def test_budgets_parse_and_validate():
    assert resolve(None, {}, {"attack": {"budgets": "0,5,10"}}).attack.budgets == (0, 5, 10)
    with pytest.raises(UserError, match="must increase"):  # out of order is a typo more often than not
        resolve(None, {}, {"attack": {"budgets": "10,0,5"}})
    with pytest.raises(UserError, match="repeated budget"):
        resolve(None, {}, {"attack": {"budgets": [0, 5, 5]}})
    with pytest.raises(UserError, match="steps >= 0"):
        resolve(None, {}, {"attack": {"budgets": [-1]}})


def test_choices_are_enforced():
    with pytest.raises(UserError, match="model.precision"):
        resolve(None, {}, {"model": {"precision": "float8"}})


def test_toml_round_trip_keeps_every_value(tmp_path: Path):
    settings = resolve(None, {}, {"attack": {"learning_rate": "3e-5", "budgets": "0,4"}, "cost": {"price_per_hour": "1.5"}})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(settings))
    again = from_dict(read_toml(path), str(path))
    assert again == settings


def test_unset_optional_round_trips_as_none(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(to_toml(Settings()))
    assert from_dict(read_toml(path), str(path)).cost.price_per_hour is None


def test_every_setting_is_printed_right_after_its_own_help():
    lines = to_toml(Settings(), with_help=True).splitlines()
    for section in SECTIONS:
        start = lines.index(f"[{section}]")
        for item in dataclasses.fields(getattr(Settings(), section)):
            doc = item.metadata["doc"]
            assert len(doc.split()) >= 3, f"{section}.{item.name} has no real help"
            setting = next(i for i, line in enumerate(lines) if i > start and line.startswith((f"{item.name} = ", f"# {item.name} = (unset)")))
            assert lines[setting - 1] == f"# {doc}", f"{section}.{item.name}: its help is not the line above it"


def test_set_assignment_parsing():
    assert parse_assignment("attack.seed=3") == ("attack", "seed", "3")
    with pytest.raises(UserError, match="section.key=value"):
        parse_assignment("seed=3")
