"""Config loading: every shipped profile resolves for every stage section; unknown keys fail; a bad value
names its key; command-line overrides win over the YAML, which wins over common and the defaults."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from arena_distill import config as C

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "configs").glob("*.yaml"))
LOAD_CALL = re.compile(r"load_config\(\s*(\w+)\s*,\s*[\"'](\w+)[\"']")


def _stage_scripts() -> dict[str, tuple[Path, str]]:
    """section -> (script, config class name), found from each stage's ``load_config(Cls, "section")``."""
    scripts = sorted((REPO / "src").glob("[0-9][0-9]_*.py")) + sorted(REPO.glob("*.py"))
    found: dict[str, tuple[Path, str]] = {}
    for path in scripts:
        m = LOAD_CALL.search(path.read_text(encoding="utf-8"))
        if m:
            found[m.group(2)] = (path, m.group(1))
    return found


STAGES = _stage_scripts()


def _config_class(stage_module, section: str) -> type:
    path, cls_name = STAGES[section]
    if path.parent.name == "src":
        module = stage_module(path.name)
    else:  # a script at the repository root (predict_test.py)
        import importlib.util
        import sys

        name = f"stage_root_{path.stem}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        module = sys.modules[name]
    return getattr(module, cls_name)


def test_profiles_exist_and_share_sections() -> None:
    assert {p.name for p in PROFILES} >= {"tiny.yaml", "a100x8.yaml"}
    sections = [list(C.read_profile(p)) for p in PROFILES]
    assert all(s == sections[0] for s in sections), "every profile lists the same sections in the same order"
    assert {"common", "sample", "prepare"} <= set(sections[0])


def test_data_stages_found() -> None:
    assert STAGES["sample"][0].name == "00_make_sample_data.py" and STAGES["prepare"][0].name == "02_prepare_data.py"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_section_resolves(profile: Path, stage_module) -> None:
    data = C.read_profile(profile)
    for section, keys in data.items():
        if section == "common":
            continue
        if section not in STAGES:
            assert not keys, f"{profile.name} [{section}] sets keys but no stage reads this section"
            continue
        cls = _config_class(stage_module, section)
        fields = C._fields(cls)
        for key, value in keys.items():  # every YAML key is a field and its value has the field's type
            assert key in fields, f"{profile.name} [{section}]: unknown key '{key}'"
            C._coerce(key, value, fields[key].type, f"{profile.name} [{section}]")
        # Keys the runbooks pass on the command line (model=NAME fold=K), as run_pipeline.sh does.
        runbook = {k: v for k, v in (("model", data["common"]["teachers"][0]), ("fold", "0"))
                   if k in fields and k not in keys}
        try:
            cfg = C.build_config(cls, section, data, runbook, source=str(profile))
        except C.ConfigError as exc:
            # Errors about the YAML carry its path; others are command-line requirements of the stage
            # (e.g. logic_evaluate needs run=...), which a profile cannot and should not satisfy.
            assert not str(exc).startswith(str(profile)), str(exc)
            continue
        for key, value in keys.items():  # what the YAML says is what the stage gets
            got = getattr(cfg, key)
            assert got == value or str(got) == str(value) or (value == "" and got), (section, key, got, value)


def test_data_sections_have_production_values() -> None:
    prod, tiny = C.read_profile(REPO / "configs" / "a100x8.yaml"), C.read_profile(REPO / "configs" / "tiny.yaml")
    assert prod["prepare"]["max_length"] == 1024 and prod["prepare"]["swap_augment"] is True
    assert prod["common"]["n_folds"] == 5 and "n_folds" not in prod["prepare"]  # folds come from common
    assert tiny["prepare"]["max_length"] == 256


def test_yaml_values_are_commented() -> None:
    for profile in PROFILES:
        lines = profile.read_text(encoding="utf-8").splitlines()
        in_section = None
        for line in lines:
            m = re.match(r"^(\w+):", line)
            if m:
                in_section = m.group(1)
            elif in_section in ("sample", "prepare") and re.match(r"^  \w+:", line):
                assert "#" in line, f"{profile.name} [{in_section}] uncommented value: {line.strip()}"


def _prepare_cls(stage_module) -> type:
    return stage_module("02_prepare_data").PrepareConfig


def test_unknown_key_fails(stage_module) -> None:
    cls = _prepare_cls(stage_module)
    profile = {"common": {"teachers": ["t"], "student": "s", "not_a_prepare_key": 1},  # common: ignored
               "prepare": {"max_lenght": 512}}
    with pytest.raises(C.ConfigError, match=r"\[prepare\]: unknown key 'max_lenght'"):
        C.build_config(cls, "prepare", profile, {})
    with pytest.raises(C.ConfigError, match=r"unknown key 'bogus' for stage 'prepare'"):
        C.build_config(cls, "prepare", {"common": {"student": "s"}}, {"bogus": "1"})


def test_bad_value_names_the_key(stage_module) -> None:
    cls = _prepare_cls(stage_module)
    base = {"common": {"student": "s"}}
    with pytest.raises(C.ConfigError, match="bad value for 'max_length'"):
        C.build_config(cls, "prepare", base, {"max_length": "long"})
    with pytest.raises(C.ConfigError, match="bad value for 'truncation_side'"):
        C.build_config(cls, "prepare", base, {"truncation_side": "middle"})
    with pytest.raises(C.ConfigError, match="bad value for 'swap_augment'"):
        C.build_config(cls, "prepare", {**base, "prepare": {"swap_augment": "maybe"}}, {})
    with pytest.raises(C.ConfigError, match="n_folds must be >= 2"):
        C.build_config(cls, "prepare", base, {"n_folds": "1"})


def test_override_order(stage_module) -> None:
    cls = _prepare_cls(stage_module)
    profile = {"common": {"seed": 1, "n_folds": 4, "teachers": ["t1", "t2"], "student": "s", "data_dir": "dd"},
               "prepare": {"seed": 2, "max_length": 512}, "teacher": {}}
    cfg = C.build_config(cls, "prepare", profile, {"max_length": "300", "prepare.truncation_side": "left",
                                                   "teacher.lr": "1"})  # another stage's key: ignored
    assert (cfg.seed, cfg.n_folds, cfg.max_length, cfg.truncation_side) == (2, 4, 300, "left")
    assert cfg.models == ["t1", "t2", "s"] and cfg.train_csv == str(Path("dd") / "train.csv")
    cfg = C.build_config(cls, "prepare", profile, {"common.seed": "9", "seed": "10"})
    assert cfg.seed == 10


def test_load_config_exits_2_with_message(tmp_path: Path, stage_module, capsys) -> None:
    cls = _prepare_cls(stage_module)
    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  student: s\nprepare:\n  nonsense: 1\n")
    with pytest.raises(SystemExit) as exc:
        C.load_config(cls, "prepare", ["--config", str(bad)])
    assert exc.value.code == 2 and "unknown key 'nonsense'" in capsys.readouterr().err
    cfg = C.load_config(cls, "prepare", ["--config", str(REPO / "configs" / "tiny.yaml"), "max_length=200"])
    assert cfg.max_length == 200 and cfg.prompt_max_tokens == 64
