"""One source for defaults: the schema's defaults are the library's, every key is described,
docs/configuration.md is generated from the schema, survival.models lists the registered models."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from btpipe.config import load_schema

REPO = Path(__file__).resolve().parents[1]


def schema_defaults(section: str) -> dict:
    return {k: v.get("default") for k, v in load_schema("config")["properties"][section]["properties"].items()}


def signature_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def library_defaults() -> dict[str, dict]:
    """Per config section, the defaults the library applies when the key is not given."""
    from btpipe.features.radiomics import extract_subject
    from btpipe.features.slices import build_slice_bag
    from btpipe.ingest.step import ingest_step
    from btpipe.preprocess import preprocess_subject
    from btpipe.segment import infer, train
    from btpipe.segment.metrics import score_files
    from btpipe.survival.registry import DEFAULT_PARAMS

    radiomics = signature_defaults(extract_subject)
    return {
        "segmentation": {**train.DEFAULTS, **infer.DEFAULTS},
        "survival": DEFAULT_PARAMS,
        "preprocess": signature_defaults(preprocess_subject),
        "atlas": {"spacing_mm": signature_defaults(preprocess_subject)["spacing_mm"]},
        "slices": signature_defaults(build_slice_bag),
        "radiomics": {"params": radiomics["params_path"], "sequences": radiomics["sequences"],
                      "regions": radiomics["regions"]},
        "ingest": {"missing_sequence": signature_defaults(ingest_step)["missing_sequence"]},
        "scoring": {"metrics": signature_defaults(score_files)["metric_sets"]},
    }


@pytest.mark.parametrize("section", ["segmentation", "survival", "preprocess", "atlas", "slices",
                                     "radiomics", "ingest", "scoring"])
def test_schema_defaults_are_the_library_defaults(section):
    library = library_defaults()[section]
    schema = schema_defaults(section)
    shared = sorted(set(library) & set(schema))
    assert shared, f"no key of {section} has a library default: the comparison is empty"
    different = {k: (schema[k], library[k]) for k in shared if plain(schema[k]) != plain(library[k])}
    assert different == {}


def test_the_label_default_is_the_library_default():
    from btpipe.segment import train

    assert load_schema("config")["properties"]["labels"]["default"] == train.DEFAULTS["labels"]


def test_every_schema_key_has_a_description():
    undescribed = []

    def walk(properties, prefix=""):
        for key, node in properties.items():
            if not node.get("description"):
                undescribed.append(prefix + key)
            walk(node.get("properties", {}), f"{prefix}{key}.")

    walk(load_schema("config")["properties"])
    assert undescribed == []


def test_survival_models_are_the_registered_models():
    from btpipe.survival.registry import MODELS

    models = load_schema("config")["properties"]["survival"]["properties"]["models"]
    assert sorted(models["items"]["enum"]) == sorted(MODELS)


def test_an_unknown_survival_model_is_a_config_error(tmp_path):
    from btpipe.config import load_config
    from btpipe.errors import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text("results_dir: r\nsurvival: {models: [cox, coxx]}\n")
    with pytest.raises(ConfigError, match="survival.models.1"):
        load_config(config)


def test_configuration_page_is_generated_from_the_schema():
    from btpipe.config_docs import generate

    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == generate(REPO), "regenerate: python -m btpipe.config_docs > docs/configuration.md"
    for key in ("segmentation.time_budget_min", "survival.subset", "scoring.metrics"):
        assert f"`{key}`" in page


@pytest.mark.parametrize("recipe", ["brats2020_os.yaml", "brats_glioma.yaml"])
def test_recipes_override_the_demo_training_limits(recipe):
    """A recipe is merged over the shipped config.yaml (the demo) by snakemake --configfile:
    the demo's short training (time budget, no final model) must not reach a BraTS run."""
    from btpipe.cli import merged_configfiles
    from btpipe.config import load_config

    recipe_path = REPO / "recipes" / recipe
    config = load_config(REPO / "config.yaml", overrides=merged_configfiles([recipe_path]))
    seg = config["segmentation"]
    assert seg["time_budget_min"] is None and seg["final_model"] is True
    given = yaml.safe_load(recipe_path.read_text())["segmentation"]
    assert {key: seg[key] for key in given} == given   # every training setting is the recipe's
    # and the recipe sets every key the demo moved away from the schema's default
    demo = yaml.safe_load((REPO / "config.yaml").read_text())["segmentation"]
    defaults = load_schema("config")["properties"]["segmentation"]["properties"]
    demo_only = {k for k, v in demo.items() if defaults[k].get("default") != v}
    assert demo_only <= set(given), sorted(demo_only - set(given))
