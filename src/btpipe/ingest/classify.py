"""Series -> sequence (t1, t1ce, t2, flair) by configurable rules.

The rules live in resources/ingest/sequence_rules.yaml (see the comments
there and docs/ingest.md). `classify_series` adds four columns to the series
table: `sequence` (what the series looks like), `match_by` (description,
parameters), `chosen_as` (the sequence it was picked for, else None) and
`skip_reason` (why it was not picked, else None).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import yaml

from .. import SEQUENCES
from ..errors import ConfigError

# The warning convert.py gives a series dcm2niix wrote nothing for.
NOT_CONVERTED = "not converted by dcm2niix"

_PARAMETER_COLUMNS = ("repetition_time", "echo_time", "inversion_time")
TIE_BREAK = "prefer 3D, then the smallest voxel volume, then the latest series number"


def _compile(pattern, where, path):
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{path}: {where}: bad regular expression {pattern!r}: {exc}") from exc


def _compile_list(patterns, where, path):
    if isinstance(patterns, str):
        patterns = [patterns]
    return [_compile(p, where, path) for p in (patterns or [])]


def _range(value, where, path):
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise ConfigError(f"{path}: {where}: a range is [low, high] (null = open)")
    low, high = (None if v is None else float(v) for v in value)
    return low, high


def load_rules(path) -> dict:
    """Read and check a sequence-rules YAML file; regexes are compiled.

    Raises ConfigError naming the file and the faulty entry.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sequence rules {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    sequences = raw.get("sequences") or {}
    unknown = set(sequences) - set(SEQUENCES)
    if unknown:
        raise ConfigError(f"{path}: unknown sequence(s) {sorted(unknown)}; "
                          f"known: {list(SEQUENCES)}")
    order = raw.get("order") or list(SEQUENCES)
    if set(order) != set(sequences):
        raise ConfigError(f"{path}: 'order' {order} must list exactly the sequences "
                          f"{sorted(sequences)}")
    rules = {
        "source": str(path),
        "min_slices": int(raw.get("min_slices", 1)),
        "modalities": [m.upper() for m in raw.get("modalities") or []],
        "order": list(order),
        "skip_warnings": [(e["name"], _compile(e["pattern"], f"skip_warnings {e['name']}", path))
                          for e in raw.get("skip_warnings") or []],
        "exclude": [(e["name"], e.get("field", "text"),
                     _compile(e["pattern"], f"exclude {e['name']}", path))
                    for e in raw.get("exclude") or []],
        "contrast": {
            "patterns": _compile_list(raw.get("contrast", {}).get("patterns"), "contrast", path),
            "negative": _compile_list(raw.get("contrast", {}).get("negative"),
                                      "contrast negative", path),
        },
        "sequences": {},
    }
    for name, spec in sequences.items():
        spec = spec or {}
        params = {k: _range(v, f"sequences.{name}.parameters.{k}", path)
                  for k, v in (spec.get("parameters") or {}).items()}
        bad = set(params) - set(_PARAMETER_COLUMNS)
        if bad:
            raise ConfigError(f"{path}: sequences.{name}.parameters: unknown {sorted(bad)}; "
                              f"known: {list(_PARAMETER_COLUMNS)}")
        rules["sequences"][name] = {
            "patterns": _compile_list(spec.get("patterns"), f"sequences.{name}", path),
            "exclude": _compile_list(spec.get("exclude"), f"sequences.{name}.exclude", path),
            "contrast": spec.get("contrast"),
            "parameters": params,
        }
    return rules


def _text(row) -> str:
    parts = [row.get("series_description"), row.get("protocol_name")]
    return " | ".join(str(p) for p in parts if isinstance(p, str) and p.strip())


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_post_contrast(row, rules) -> bool:
    """Text says post-contrast (and not 'pre'), or the agent field is filled."""
    text = _text(row)
    if any(p.search(text) for p in rules["contrast"]["negative"]):
        return False
    if any(p.search(text) for p in rules["contrast"]["patterns"]):
        return True
    agent = row.get("contrast_agent")
    return bool(agent) and not _missing(agent)


def unusable_reason(row, rules):
    """Why a series cannot be a structural volume at all, else None."""
    if _missing(row.get("file")):
        # dcm2niix's own notes say which file stopped it: keep them in the reason.
        detail = [w for w in _warnings(row) if w != NOT_CONVERTED]
        return "not converted" + "".join(f": {w}" for w in detail[:2])
    modality = row.get("modality")
    if rules["modalities"] and isinstance(modality, str) and \
            modality.upper() not in rules["modalities"]:
        return f"modality {modality}, not {'/'.join(rules['modalities'])}"
    n_volumes = row.get("n_volumes")
    if not _missing(n_volumes) and int(n_volumes) > 1:
        return f"4D series ({int(n_volumes)} volumes)"
    n_slices = row.get("n_slices")
    if not _missing(n_slices) and int(n_slices) < rules["min_slices"]:
        return f"too few slices ({int(n_slices)} < {rules['min_slices']})"
    for warning in _warnings(row):
        for name, pattern in rules["skip_warnings"]:
            if pattern.search(warning):
                return f"{name}: {warning}"
    return None


def _warnings(row):
    value = row.get("warnings")
    if value is None or isinstance(value, float):
        return []
    return [value] if isinstance(value, str) else list(value)


def excluded_reason(row, rules):
    """'excluded (<rule name>)' if an exclusion pattern matches, else None."""
    text = _text(row)
    for name, field, pattern in rules["exclude"]:
        target = text if field == "text" else row.get(field)
        if isinstance(target, str) and pattern.search(target):
            return f"excluded ({name}: matched {pattern.search(target).group(0)!r})"
    return None


def _in_range(value, low, high) -> bool:
    if _missing(value):
        # 'no inversion' ranges ([null, 0]) accept a missing TI.
        return high is not None and high <= 0 and low is None
    return (low is None or value >= low) and (high is None or value <= high)


def match_sequence(row, rules):
    """(sequence, 'description' | 'parameters') or (None, None)."""
    text = _text(row)
    contrast = is_post_contrast(row, rules)

    def allowed(spec):
        if spec["contrast"] is not None and bool(spec["contrast"]) != contrast:
            return False
        return not any(p.search(text) for p in spec["exclude"])

    for name in rules["order"]:
        spec = rules["sequences"][name]
        if any(p.search(text) for p in spec["patterns"]) and allowed(spec):
            return name, "description"
    for name in rules["order"]:
        spec = rules["sequences"][name]
        if spec["parameters"] and allowed(spec) and all(
                _in_range(row.get(col), low, high)
                for col, (low, high) in spec["parameters"].items()):
            return name, "parameters"
    return None, None


def _tie_break_key(row):
    """Sort key, best first: 3D, finest voxel volume, latest series number."""
    is_3d = str(row.get("acquisition_type") or "").upper() == "3D"
    volume = row.get("voxel_volume")
    volume = math.inf if _missing(volume) else float(volume)
    number = row.get("series_number")
    number = -math.inf if _missing(number) else float(number)
    return (not is_3d, volume, -number, str(row.get("file") or ""))


def classify_series(table: pd.DataFrame, rules) -> pd.DataFrame:
    """Copy of `table` with columns sequence, match_by, chosen_as, skip_reason.

    `rules` is a dict from `load_rules` (or a path to one). Every row ends with
    exactly one of chosen_as / skip_reason set.
    """
    if not isinstance(rules, dict):
        rules = load_rules(rules)
    out = table.copy().reset_index(drop=True)
    records = out.to_dict("records")
    sequence, match_by, chosen, reasons = [], [], [None] * len(out), [None] * len(out)
    candidates = {name: [] for name in rules["order"]}
    for i, row in enumerate(records):
        reason = unusable_reason(row, rules) or excluded_reason(row, rules)
        seq, how = (None, None) if reason else match_sequence(row, rules)
        sequence.append(seq)
        match_by.append(how)
        if reason:
            reasons[i] = reason
        elif seq is None:
            reasons[i] = "no sequence rule matched"
        else:
            candidates[seq].append(i)
    for seq, idx in candidates.items():
        ranked = sorted(idx, key=lambda i: _tie_break_key(records[i]))
        for rank, i in enumerate(ranked):
            if rank == 0:
                chosen[i] = seq
            else:
                best = records[ranked[0]]
                reasons[i] = (f"{seq} candidate; series {best.get('series_number')} "
                              f"preferred ({TIE_BREAK})")
    out["sequence"] = sequence
    out["match_by"] = match_by
    out["chosen_as"] = chosen
    out["skip_reason"] = reasons
    return out
