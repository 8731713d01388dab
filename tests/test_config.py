"""Presets validate into typed objects; unknown keys and wrong types are errors naming the key."""

import pytest

from audit.config import load_data_config, preset_names
from audit.errors import AuditInputError


def test_shipped_dataset_presets_validate():
    assert {"vindr", "phantom-mammo", "phantom-brain3d"} <= set(preset_names("datasets"))
    vindr = load_data_config("vindr", root="/data/vindr")
    assert vindr.reader == "vindr" and vindr.preprocess.ndim == 2 and str(vindr.root) == "/data/vindr"
    assert load_data_config("phantom-brain3d").preprocess.shape == (32, 32, 32)


@pytest.mark.parametrize("yaml_text,message", [
    ("name: x\nreader: vindr\npreprocess: {shape: [64, 64], colour: red}\n", "unknown key 'preprocess.colour'"),
    ("name: x\nreader: vindr\npreprocess: {shape: [64, big]}\n", "bad value for 'preprocess.shape.1'"),
    ("name: x\nreader: pdf\npreprocess: {shape: [64, 64]}\n", "bad value for 'reader'"),
    ("name: x\nreader: vindr\n", "missing key 'preprocess'"),
    ("name: x\nreader: vindr\npreprocess: {shape: [64]}\n", "bad value for 'preprocess.shape'"),
    ("- a\n- b\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_configs_name_the_file_and_key(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(AuditInputError) as err:
        load_data_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(AuditInputError, match="unknown dataset preset 'vindrr' \\(known: .*vindr"):
        load_data_config("vindrr")


def test_every_shipped_generator_preset_validates():
    from generators.config import load_generator_config

    names = preset_names("generators")
    assert {"ldm2d-tiny", "ldm3d-tiny", "memorize", "memorize-quick"} <= set(names)
    for name in names:
        cfg = load_generator_config(name)
        assert cfg.kind in ("ldm2d", "ldm3d")
    quick, full = load_generator_config("memorize-quick"), load_generator_config("memorize")
    # the demo's control is the memorize recipe with a smaller budget, nothing else
    assert quick.model_dump(exclude={"description"}) != full.model_dump(exclude={"description"})
    assert quick.unet.steps < full.unet.steps and quick.training.max_records == full.training.max_records
