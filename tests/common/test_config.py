"""Configuration: CLI > environment > TOML > default, and every bad value names its field and what is allowed."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from flexgc.common.config import (
    MASTER_OPTIONS,
    WORKER_OPTIONS,
    MasterConfig,
    WorkerConfig,
    add_options,
    master_config,
    resolve,
    worker_config,
)
from flexgc.common.errors import ConfigError

TOKEN = "s3cret-join-token"


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "flexgc.toml"
    path.write_text(text)
    return str(path)


def parse_cli(argv: list[str], options: list[Any] = MASTER_OPTIONS) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, options)
    return parser.parse_args(argv)


# -- precedence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("use_cli", "use_env", "use_toml", "expected"), [
    (True, True, True, 5),
    (False, True, True, 6),
    (False, False, True, 7),
    (False, False, False, 4),     # the default
])
def test_precedence_cli_over_env_over_toml_over_default(tmp_path: Path, use_cli: bool, use_env: bool,
                                                       use_toml: bool, expected: int) -> None:
    args = parse_cli(["--workers", "5"] if use_cli else [])
    env = {"FLEXGC_WORKERS": "6"} if use_env else {}
    config_file = write_toml(tmp_path, "workers = 7\n") if use_toml else None

    values = resolve(MASTER_OPTIONS, vars(args), env, config_file)

    assert values["workers"] == expected
    assert MasterConfig.from_values(values).workers == expected


def test_precedence_is_per_field(tmp_path: Path) -> None:
    config_file = write_toml(tmp_path, 'workers = 7\nlr = 0.1\nmodel = "least-squares"\n')
    args = parse_cli(["--lr", "0.3"])

    values = resolve(MASTER_OPTIONS, vars(args), {"FLEXGC_WORKERS": "6"}, config_file)

    assert (values["lr"], values["workers"], values["model"], values["iterations"]) == (0.3, 6, "least-squares", 20)


def test_config_file_from_environment_and_cli_flag_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("iterations = 11\n")
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text("iterations = 12\n")

    from_env = resolve(MASTER_OPTIONS, {}, {"FLEXGC_CONFIG": str(env_file)}, None)
    from_flag = resolve(MASTER_OPTIONS, {}, {"FLEXGC_CONFIG": str(env_file)}, str(cli_file))

    assert (from_env["iterations"], from_flag["iterations"]) == (11, 12)


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--verify"], {}, True),
    (["--no-verify"], {"FLEXGC_VERIFY": "yes"}, False),
    ([], {"FLEXGC_VERIFY": "on"}, True),
    ([], {"FLEXGC_VERIFY": "0"}, False),
    ([], {}, False),
])
def test_boolean_flags_and_environment(argv: list[str], env: dict[str, str], expected: bool) -> None:
    values = resolve(MASTER_OPTIONS, vars(parse_cli(argv)), env, None)

    assert values["verify"] is expected


def test_worker_options_resolve_the_same_way(tmp_path: Path) -> None:
    config_file = write_toml(tmp_path, 'master = "10.0.0.1:7000"\nslot = 2\n')
    args = parse_cli(["--slot", "3"], WORKER_OPTIONS)

    cfg = WorkerConfig.from_values(resolve(WORKER_OPTIONS, vars(args), {"FLEXGC_WORKER_ID": "w-9"}, config_file))

    assert (cfg.master, cfg.slot, cfg.identity) == ("10.0.0.1:7000", 3, "w-9")


# -- bad values: conversion, range, choices -----------------------------------------------------


@pytest.mark.parametrize(("field", "raw", "expected"), [
    ("workers", "four", "must be an integer"),
    ("workers", "2.5", "must be an integer"),
    ("workers", "0", "must be >= 1"),
    ("port", "-1", "must be >= 0"),
    ("lr", "fast", "must be a finite number"),
    ("lr", "nan", "must be a finite number"),
    ("lr", "inf", "must be a finite number"),
    ("lr", "-0.1", "must be >= 0"),
    ("deadline_s", "-1", "must be >= 0"),
    ("heartbeat_s", "0.01", "must be >= 0.05"),
    ("chunk_bytes", "512", "must be >= 1024"),
    ("verify", "maybe", "must be true/false"),
    ("dtype", "float16", "allowed: float64, float32"),
    ("on_deadline", "retry", "allowed: fail, approximate"),
    ("classes", "1", "must be >= 2"),
])
@pytest.mark.parametrize("source", ["cli", "env", "toml"])
def test_bad_value_names_field_source_and_allowed(tmp_path: Path, field: str, raw: str, expected: str,
                                                  source: str) -> None:
    option = next(o for o in MASTER_OPTIONS if o.name == field)
    cli = {field: raw} if source == "cli" else {}
    env = {option.env: raw} if source == "env" else {}
    config_file = write_toml(tmp_path, f"{field} = {raw!r}\n".replace("'", '"')) if source == "toml" else None

    with pytest.raises(ConfigError) as info:
        resolve(MASTER_OPTIONS, cli, env, config_file)

    message = str(info.value)
    assert field in message
    assert expected in message
    where = {"cli": option.flag, "env": option.env, "toml": str(config_file)}[source]
    assert where in message


@pytest.mark.parametrize(("toml", "field", "expected"), [
    ("workers = 2.5\n", "workers", "must be an integer"),
    ("workers = true\n", "workers", "must be an integer"),
    ("lr = true\n", "lr", "must be a finite number"),
    ("lr = nan\n", "lr", "must be a finite number"),
    ("verify = 3\n", "verify", "must be true/false"),
    ('model = 1\n', "model", "must be a string"),
])
def test_typed_toml_values_of_the_wrong_type(tmp_path: Path, toml: str, field: str, expected: str) -> None:
    config_file = write_toml(tmp_path, toml)

    with pytest.raises(ConfigError, match=expected) as info:
        resolve(MASTER_OPTIONS, {}, {}, config_file)

    assert field in str(info.value)


@pytest.mark.parametrize("raw", [2.5, True, [4]])
def test_typed_overrides_of_the_wrong_type(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"workers \(from --workers\)=.*: must be an integer"):
        master_config(workers=raw)


@pytest.mark.parametrize("toml", ["out = true\n", 'tls_ca = ["a.pem", "b.pem"]\n', "host = 1.5\n"])
def test_toml_non_string_for_a_string_option_is_rejected(tmp_path: Path, toml: str) -> None:
    config_file = write_toml(tmp_path, toml)
    field = toml.split(" ")[0]

    with pytest.raises(ConfigError, match="must be a string") as info:
        resolve(MASTER_OPTIONS, {}, {}, config_file)

    assert field in str(info.value)


# -- bad TOML files -----------------------------------------------------------------------------


def test_unknown_toml_key_names_it_and_the_allowed_keys(tmp_path: Path) -> None:
    config_file = write_toml(tmp_path, "workers = 4\nwrokers = 5\nspeed = 1\n")

    with pytest.raises(ConfigError) as info:
        resolve(MASTER_OPTIONS, {}, {}, config_file)

    message = str(info.value)
    assert "unknown key(s) speed, wrokers" in message
    assert "allowed:" in message and "workers" in message and "deadline_s" in message
    assert config_file in message


def test_worker_option_in_a_master_file_is_unknown(tmp_path: Path) -> None:
    config_file = write_toml(tmp_path, 'master = "h:1"\n')

    with pytest.raises(ConfigError, match=r"unknown key\(s\) master"):
        resolve(MASTER_OPTIONS, {}, {}, config_file)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.toml" if kind == "missing" else tmp_path

    with pytest.raises(ConfigError) as info:
        resolve(MASTER_OPTIONS, {}, {}, str(path))

    assert f"config={str(path)!r}: cannot read" in str(info.value)


@pytest.mark.parametrize("text", [
    "workers = \n", "[[[", "workers = 4\nworkers = 5\n", 'lr = "0.5\n',
    b"workers = 4\n\xff\xfe\n",
])
def test_invalid_toml(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)

    with pytest.raises(ConfigError) as info:
        resolve(MASTER_OPTIONS, {}, {}, str(path))

    assert f"config={str(path)!r}" in str(info.value)


# -- cross-field checks of the dataclasses ------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    (dict(momentum=1.0), r"momentum=1.0; must be in \[0, 1\)"),
    (dict(port=70000), "port=70000.*must be <= 65535"),
    (dict(metrics_port=65536), "metrics_port=65536; must be <= 65535"),
    (dict(chunk_bytes=5 << 20), "chunk_bytes=5242880; must be <= 4194304"),
    (dict(max_workers=2, workers=4), "max_workers=2; must be 0 or >= workers=4"),
    (dict(max_workers=20, workers=4, code="nested:levels=0,1"),
     r"max_workers=20: the job's k=16 partitions are shared by at most 16 workers; allowed: 4\.\.16"),
    (dict(max_workers=6, workers=4, code="nested:levels=0,1", delay="shifted-exp:a=1,mu=1/slow:workers=6,factor=2"),
     "slow.*6"),
    (dict(classes=3), "classes=3; logistic regression has 2 classes"),
    (dict(model="svm"), "model='svm': unknown model; allowed: logistic, softmax, least-squares, jax-mlp, jax-cnn, "
                        "or a user model by import path MODULE:FACTORY"),
    (dict(model="jax-mlp:width=3"), "model='jax-mlp:width=3': unknown option width; allowed for 'jax-mlp': depth, "
                                    "dtype, hidden"),
    (dict(model="jax-cnn:dtype=float16"), "model: dtype='float16'; allowed: float32, float64"),
    (dict(optimizer="rmsprop"), "optimizer='rmsprop': unknown optimizer 'rmsprop'; allowed: gd, sgd, adam, adamw"),
    (dict(optimizer="adam:lr=-1"), r"optimizer: lr=-1.0 must be >= 0.0"),
    (dict(optimizer="adam:schedule=cosine"), "optimizer: schedule=cosine needs steps"),
    (dict(optimizer="sgd:nesterov=maybe"), "optimizer: nesterov='maybe'; allowed: true, false"),
    (dict(optimizer="gd:momentum=1"), r"optimizer: momentum=1.0; must be in \[0, 1\)"),
    (dict(code="bogus"), "code='bogus': unknown family 'bogus'; allowed: uncoded, ignore, frc, crc, nested"),
    (dict(code="crc:s=9", workers=4), r"code='crc:s=9': s=9; need 0 <= s < n=4"),
    (dict(code="crc:q=1"), "code='crc:q=1': unknown option q; allowed for 'crc'"),
    (dict(code="nested:levels=0,1,x"), "code='nested:levels=0,1,x': levels='0,1,x' must be integers"),
    (dict(code=""), "code='': empty spec"),
    (dict(delay="gauss:a=1"), "delay='gauss:a=1': 'gauss' unknown base model; allowed: none, shifted-exp"),
    (dict(delay="shifted-exp:a=-1"), r"delay: a=-1.0 must be >= 0.0"),
    (dict(delay="shifted-exp:a=1/slow:workers=1"), r"slow needs factor=F \(F >= 1\)"),
    (dict(delay="shifted-exp/fast:x=1"), "'fast' after '/' is not a modifier; allowed:"),
])
def test_master_config_cross_field_errors(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        master_config(**overrides)


@pytest.mark.parametrize("master", ["localhost", ":50051", "host:", "host:0", "host:65536", "host:abc",
                                    "host:-1", "host: 1", ""])
def test_bad_master_address(master: str) -> None:
    with pytest.raises(ConfigError) as info:
        worker_config(master=master)

    assert str(info.value) == f"master={master!r}; expected HOST:PORT with a port in 1..65535"


@pytest.mark.parametrize("master", ["127.0.0.1:1", "example.org:65535", "[::1]:50051"])
def test_good_master_address(master: str) -> None:
    assert worker_config(master=master).master == master


@pytest.mark.parametrize("master", ["host:²", "host:٥٠"])
def test_non_ascii_port_digits_are_a_config_error(master: str) -> None:
    with pytest.raises(ConfigError, match="master="):
        worker_config(master=master)


def test_worker_bad_delay_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"delay: alpha='x' is not a number \(in 'pareto:alpha=x'\)"):
        worker_config(delay="pareto:alpha=x")


@pytest.mark.parametrize(("field", "raw", "expected"), [
    ("slot", "-2", "must be >= -1"),
    ("reconnect_max_s", "0", "must be >= 0.01"),
    ("rows_per_chunk", "0", "must be >= 1"),
    ("linger", "perhaps", "must be true/false"),
])
def test_worker_option_errors(field: str, raw: str, expected: str) -> None:
    option = next(o for o in WORKER_OPTIONS if o.name == field)

    with pytest.raises(ConfigError) as info:
        resolve(WORKER_OPTIONS, {}, {option.env: raw}, None)

    assert f"{field} (from {option.env})" in str(info.value)
    assert expected in str(info.value)


# -- the token never leaks ----------------------------------------------------------------------


def test_redacted_hides_the_token() -> None:
    cfg = master_config(token=TOKEN)

    shown = cfg.redacted()

    assert shown["token"] == "***"
    assert TOKEN not in str(shown)
    assert master_config().redacted()["token"] is None


@pytest.mark.parametrize(("cli", "env", "toml"), [
    ({"workers": "zero"}, {"FLEXGC_TOKEN": TOKEN}, ""),
    ({}, {"FLEXGC_TOKEN": TOKEN, "FLEXGC_LR": "nan"}, ""),
    ({"token": TOKEN}, {}, "speed = 1\n"),
    ({}, {}, f'token = "{TOKEN}"\nworkers = "x"\n'),
    ({}, {}, f'token = "{TOKEN}"\nspeed = 1\n'),
    ({}, {}, f'token = "{TOKEN}\n'),                     # unterminated: invalid TOML
    ({}, {}, f'token = {TOKEN}\n'),                      # unquoted: invalid TOML
])
def test_errors_never_show_the_token(tmp_path: Path, cli: dict[str, str], env: dict[str, str], toml: str) -> None:
    config_file = write_toml(tmp_path, toml) if toml else None

    with pytest.raises(ConfigError) as info:
        MasterConfig.from_values(resolve(MASTER_OPTIONS, cli, env, config_file))

    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


def test_master_cross_field_error_with_token_does_not_show_it() -> None:
    with pytest.raises(ConfigError) as info:
        master_config(token=TOKEN, momentum=2.0)

    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("options", [MASTER_OPTIONS, WORKER_OPTIONS], ids=["master", "worker"])
def test_help_names_every_default_and_every_allowed_value(options: list[Any]) -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, options)

    text = " ".join(parser.format_help().split())  # argparse wraps lines

    assert "FLEXGC_TOKEN; default not set]" in text
    for opt in options:
        if opt.choices:
            assert f"{opt.env}; default {opt.default!r}; one of {', '.join(opt.choices)}]" in text


def test_each_option_is_declared_once_on_its_config_field() -> None:
    master = {o.name for o in MASTER_OPTIONS}
    worker = {o.name for o in WORKER_OPTIONS}

    assert master == {f.name for f in dataclasses.fields(MasterConfig)}
    assert worker == {f.name for f in dataclasses.fields(WorkerConfig)}
    assert next(o for o in MASTER_OPTIONS if o.name == "dtype").choices == ("float64", "float32")
    assert next(o for o in MASTER_OPTIONS if o.name == "token").secret


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(code="crcc:s=2"), "code='crcc:s=2': unknown family 'crcc'; allowed: uncoded, ignore, frc, crc, nested, "
                            "nested-frc, multimessage, weighted"),
    (dict(workers=3, code="nested:levels=0,1,2,3"), "code='nested:levels=0,1,2,3': levels=0,1,2,3; need strictly "
                                                    "increasing 0 <= s_0 < ... < s_L < n=3"),
    (dict(port=70000), "port=70000; must be <= 65535"),
    (dict(delay="shifted-exp:a=1/dead:workers=9"), "delay='shifted-exp:a=1,mu=1,p=0/dead:workers=9': "
                                                   "dead:workers=9 names slot 9; allowed: 0..3 (workers=4)"),
])
def test_master_errors_name_the_field_once(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        master_config(**overrides)

    assert str(info.value) == message


@pytest.mark.parametrize(("workers", "code"), [(3, "nested:levels=0,1,2"), (8, "nested:levels=0,1,2,3"),
                                               (256, "nested-frc:groups=1,2,4,8,16,32")])
def test_the_default_code_follows_n(workers: int, code: str) -> None:
    from flexgc.common.codes import parse_code

    cfg = master_config(workers=workers)

    assert cfg.code == "auto" and parse_code(cfg.code, workers).spec.startswith(code)


def test_adapt_refuses_an_approximate_code_and_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"adapt='speed' with code='ignore:s=1'.*allowed: an exact code"):
        master_config(code="ignore:s=1", adapt="speed")
    with pytest.raises(ConfigError, match=r"adapt.*'fast'; allowed: auto, off, speed"):
        master_config(adapt="fast")
    with pytest.raises(ConfigError, match=r"adapt_split=65; allowed 1\.\.64"):
        master_config(adapt="speed", adapt_split=65)


@pytest.mark.parametrize(("code", "workers", "mode"), [
    ("nested:levels=0,1,2", 8, "all"), ("uncoded", 4, "all"), ("ignore:s=1", 4, "off"),
    ("nested-frc:groups=1,2", 512, "off"),
])
def test_adapt_auto_is_all_for_an_exact_code_and_off_for_ignore_s_and_beyond_256(code: str, workers: int,
                                                                                 mode: str) -> None:
    from flexgc.master.adapt import AdaptPolicy

    cfg = master_config(code=code, workers=workers)

    assert cfg.adapt == "auto" and AdaptPolicy.of(cfg).mode == mode
