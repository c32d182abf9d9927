"""Config loading and validation against workflow/schemas (defaults filled in).

The Snakefile validates with snakemake.utils.validate; `btpipe validate` and
library callers use `load_config`, which applies the same JSON schema.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def schema_dir() -> Path:
    """workflow/schemas of the checkout btpipe runs from (or $BTPIPE_SCHEMAS)."""
    candidates = [os.environ.get("BTPIPE_SCHEMAS"), REPO_ROOT / "workflow" / "schemas",
                  Path.cwd() / "workflow" / "schemas"]
    for cand in candidates:
        if cand and (Path(cand) / "config.schema.yaml").exists():
            return Path(cand)
    raise ConfigError("cannot find workflow/schemas/config.schema.yaml; set BTPIPE_SCHEMAS")


def load_schema(name: str) -> dict:
    with open(schema_dir() / f"{name}.schema.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_class):
    """A validator that fills `default` values, as snakemake.utils.validate does."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = json.loads(json.dumps(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _field_name(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(config: dict) -> dict:
    """Fill defaults in place and raise ConfigError naming every bad field."""
    errors = sorted(_Validator(load_schema("config")).iter_errors(config),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"config field {_field_name(e)}: {e.message}" for e in errors]
        raise ConfigError("; ".join(lines))
    return config


def load_config(path="config.yaml", overrides: dict | None = None) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    if overrides:
        config = deep_update(config, overrides)
    return validate_config(config)


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def config_digest(config: dict) -> str:
    """Short stable digest of the effective configuration (for provenance)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Names of the skull-on atlas T1 beside the atlas brain (`btpipe atlas` writes the first).
HEAD_ATLAS_NAMES = ("t1_head.nii", "t1_head.nii.gz")


def head_atlas_beside(atlas_path) -> Path | None:
    """The skull-on T1 in the folder of the atlas brain ``atlas_path``, or None."""
    folder = Path(atlas_path).parent
    return next((folder / n for n in HEAD_ATLAS_NAMES if (folder / n).is_file()), None)


def head_atlas_file(config: dict) -> Path | None:
    """The skull-on atlas that ``preprocess.atlas_target: head`` reads; None for 'brain'.

    Beside ``atlas.path``; when none exists yet, the name ``btpipe atlas``
    writes, so a missing file is reported under the name that fixes it.
    """
    if config["preprocess"]["atlas_target"] != "head":
        return None
    atlas = Path(config["atlas"]["path"])
    return head_atlas_beside(atlas) or atlas.parent / HEAD_ATLAS_NAMES[0]
