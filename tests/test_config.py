"""Config loading: every key checked, one-line errors naming section.key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.config import (DEFAULT_CONFIG, RuntimeConfig, config_from_dict, load_config, with_overrides)
from pipeline.errors import ConfigError
from tests.conftest import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["default.yaml", "rtsp.yaml", "batch.yaml", "traffic.yaml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "configs" / name)
    assert config.inputs and config.stages
    names = [s.name for s in config.stages]
    assert names[-1] == "blobs" or names[-2:] == ["blobs", "analytics"]


def test_default_config_is_found_without_a_path():
    assert load_config(None).source == str(DEFAULT_CONFIG)


def test_values_become_frozen_dataclasses(tmp_path):
    c = load_config(write(tmp_path, """
inputs: [a.mp4, {uri: "rtsp://u:p@h/x", name: cam, live: true}]
runtime: {queue_size: 3, policy: drop_oldest}
stages:
  - mog2: {history: 100, var_threshold: 16, batch: 4, batch_timeout_ms: 2}
outputs: {preview: false}
"""))
    assert c.runtime.queue_size == 3 and c.runtime.policy == "drop_oldest"
    assert c.inputs[1].name == "cam" and c.inputs[1].live is True
    mog2 = c.stages[0]
    assert (mog2.batch, mog2.batch_timeout_ms) == (4, 2.0)
    assert mog2.config.history == 100 and mog2.config.var_threshold == 16.0  # int accepted for float
    assert c.outputs.preview is False and c.outputs.masks is True
    with pytest.raises(Exception):
        c.runtime.queue_size = 5  # frozen


def error_of(tmp_path, text) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_unknown_top_level_key_lists_valid_keys(tmp_path):
    e = error_of(tmp_path, "input: [a.mp4]\n")
    assert e.input == "input"
    assert "unknown key" in e.cause and "valid keys: inputs, output, runtime, stages, outputs" in e.cause


def test_unknown_section_key_names_section_dot_key(tmp_path):
    e = error_of(tmp_path, "runtime: {queue_sise: 4}\n")
    assert e.input == "runtime.queue_sise"
    assert "valid keys: backend, device, max_frames, queue_size, policy" in e.cause
    assert str(tmp_path / "c.yaml") in e.cause


def test_unknown_stage_key_lists_the_stage_config_fields(tmp_path):
    e = error_of(tmp_path, "stages:\n  - mog2: {histroy: 10}\n")
    assert e.input == "stages.mog2.histroy"
    assert "history" in e.cause and "batch_timeout_ms" in e.cause


def test_unknown_stage_name(tmp_path):
    e = error_of(tmp_path, "stages:\n  - mog3: {}\n")
    assert e.input == "stages.mog3" and "valid stages:" in e.cause and "mog2" in e.cause


@pytest.mark.parametrize("text, key, expected, got", [
    ("runtime: {queue_size: eight}\n", "runtime.queue_size", "expected int", "got str 'eight'"),
    ("runtime: {queue_size: true}\n", "runtime.queue_size", "expected int", "got bool True"),
    ("runtime: {policy: fast}\n", "runtime.policy", "'auto' | 'block' | 'drop_oldest'", "got str 'fast'"),
    ("outputs: {masks: 1}\n", "outputs.masks", "expected bool", "got int 1"),
    ("stages:\n  - mog2: {history: 1.5}\n", "stages.mog2.history", "expected int", "got float 1.5"),
    ("stages:\n  - mog2: {batch: two}\n", "stages.mog2.batch", "expected int", "got str 'two'"),
])
def test_wrong_type_names_key_got_and_expected(tmp_path, text, key, expected, got):
    e = error_of(tmp_path, text)
    assert e.input == key
    assert expected in e.cause and got in e.cause


@pytest.mark.parametrize("text, key", [
    ("runtime: {queue_size: 0}\n", "runtime.queue_size"),
    ("runtime: {max_frames: -3}\n", "runtime.max_frames"),
    ("outputs: {preview_scale: 2}\n", "outputs.preview_scale"),
    ("stages:\n  - dcp: {omega: 3.0}\n", "stages.dcp.omega"),  # the stage's own range check
    ("stages:\n  - mog2: {batch: 0}\n", "stages.mog2.batch"),
])
def test_values_out_of_range_name_their_key(tmp_path, text, key):
    path = write(tmp_path, text)
    try:
        from pipeline.graph import build_stages
        build_stages(load_config(path).stages)
    except ConfigError as e:
        assert e.input == key
    else:
        pytest.fail(f"{text!r} was accepted")


def test_stage_list_shape_is_checked(tmp_path):
    e = error_of(tmp_path, "stages: {mog2: {}}\n")
    assert e.input == "stages" and "single-key mappings" in e.cause
    e = error_of(tmp_path, "stages:\n  - {mog2: {}, blobs: {}}\n")
    assert e.input == "stages[0]"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.input == str(tmp_path / "nope.yaml") and "not found" in info.value.cause
    e = error_of(tmp_path, "runtime: {queue_size: [1, 2\n")
    assert "invalid YAML at line" in e.cause


def test_yaml_is_loaded_safely(tmp_path):
    e = error_of(tmp_path, "output: !!python/object/apply:os.system ['echo hi']\n")
    assert "invalid YAML" in e.cause


def test_overrides_and_runtime_handed_to_stages():
    c = config_from_dict({"stages": [{"mog2": {}}], "inputs": ["a.mp4"]})
    c2 = with_overrides(c, inputs=["b.mp4", "c.mp4"], output="x", device="cuda", max_frames=5)
    assert [i.uri for i in c2.inputs] == ["b.mp4", "c.mp4"] and c2.output == "x"
    assert c2.runtime == RuntimeConfig(device="cuda", max_frames=5)
    with pytest.raises(ConfigError) as info:
        with_overrides(c, max_frames=0)
    assert info.value.input == "--max-frames"


def test_cli_prints_one_line_for_a_config_error(tmp_path, capsys):
    path = write(tmp_path, "runtime: {queue_sise: 4}\n")
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("hazeflow: error: runtime.queue_sise: unknown key")


def test_hazeflow_run_subprocess_missing_config(tmp_path):
    missing = tmp_path / "missing.yaml"
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(missing)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip() == f"hazeflow: error: {missing}: config file not found"
