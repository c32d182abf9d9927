"""Unit tests: config schema, samples sheet checks, label conventions, atomic writes."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from btpipe import io, labels
from btpipe.config import load_config, validate_config
from btpipe.errors import ConfigError, InputError
from btpipe.samples import check_rows, load_samples, parse_survival, read_table

# --- config -----------------------------------------------------------------


def test_default_config_validates_and_fills_defaults(tmp_path):
    config = load_config("config.yaml")
    assert config["segmentation"]["mode"] == "train"
    assert config["survival"]["class_cutoffs_months"] == [10, 15]
    minimal = validate_config({"results_dir": "out"})
    assert minimal["preprocess"]["registration_backend"] == "greedy"
    assert minimal["atlas"]["spacing_mm"] == 1.0


@pytest.mark.parametrize("bad, field", [
    ({"segmentation": {"mode": "guess"}}, "segmentation.mode"),
    ({"survival": {"folds": 1}}, "survival.folds"),
    ({"atlas": {"spacing_mm": -1}}, "atlas.spacing_mm"),
    ({"radiomics": {"regions": ["WT", "XX"]}}, "radiomics.regions.1"),
    ({"unknown_key": 1}, "(top level)"),
])
def test_bad_config_field_is_named(bad, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("(", r"\(")
                       .replace(")", r"\)")):
        validate_config({"results_dir": "r", **bad})


# --- samples sheet ----------------------------------------------------------------


def _sheet(tmp_path, rows, name="samples.tsv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, sep="\t" if name.endswith("tsv") else ",", index=False)
    return path


def _config(tmp_path, sheet):
    return validate_config({"results_dir": str(tmp_path / "r"), "samples": str(sheet)})


@pytest.mark.parametrize("rows, message", [
    ([{"subject": "a", "dicom_dir": "x"}, {"subject": "a", "dicom_dir": "y"}], "duplicate subject id 'a'"),
    ([{"subject": "../etc", "dicom_dir": "x"}], r"row 2 \(subject \.\./etc\), field subject"),
    ([{"subject": "a/b", "dicom_dir": "x"}], r"subject a/b\), field subject"),
    ([{"subject": "a", "dicom_dri": "x"}], "did you mean 'dicom_dir'"),
    ([{"subject": "a", "t1": "x", "spcae": "native"}], "did you mean 'space'"),
    ([{"name": "a", "dicom_dir": "x"}], "required column 'subject'"),
    ([{"subject": "a", "age": "old"}], "needs a 'dicom_dir' column"),
    ([{"subject": "a", "dicom_dir": "x", "event": 3}], r"field event"),
])
def test_bad_samples_sheet_named_before_any_job(tmp_path, rows, message):
    sheet = _sheet(tmp_path, rows)
    with pytest.raises(ConfigError, match=message):
        load_samples(_config(tmp_path, sheet))


def test_sheet_paths_resolve_relative_to_sheet_and_keep_na_text(tmp_path):
    (tmp_path / "sub").mkdir()
    sheet = _sheet(tmp_path / "sub", [{"subject": "s1", "dicom_dir": "dcm/s1",
                                       "extent_of_resection": "NA"}], name="s.csv")
    frame = load_samples(_config(tmp_path, sheet))
    assert frame.loc["s1", "dicom_dir"] == str(tmp_path / "sub" / "dcm" / "s1")
    assert read_table(sheet).loc[0, "extent_of_resection"] == "NA"
    assert check_rows(read_table(sheet)) == []


@pytest.mark.parametrize("value, expected", [
    ("ALIVE (361 days later)", (361.0, 0)), ("412", (412.0, None)), (89.5, (89.5, None)),
    ("", (None, None)),
])
def test_parse_survival(value, expected):
    assert parse_survival(value) == expected


@pytest.mark.parametrize("value", ["-5", "soon", "ALIVE"])
def test_bad_survival_names_subject(value):
    with pytest.raises(InputError, match="subject BraTS20_001"):
        parse_survival(value, subject="BraTS20_001")


def test_validate_cli_reports_missing_file(tmp_path):
    sheet = _sheet(tmp_path, [{"subject": "s1", "t1": "nope.nii.gz", "t1ce": "a", "t2": "b",
                               "flair": "c"}])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"results_dir: {tmp_path}/r\nsamples: {sheet}\n")
    proc = subprocess.run([sys.executable, "-m", "btpipe.cli", "validate", "--config", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "subject s1: missing file t1=" in proc.stderr and "nope.nii.gz" in proc.stderr


def test_validate_cli_reports_missing_skull_on_atlas(tmp_path):
    """atlas_target head (the default) needs t1_head.nii beside the atlas brain."""
    atlas = tmp_path / "atlas" / "t1_brain.nii.gz"
    atlas.parent.mkdir()
    atlas.write_bytes(b"placeholder")
    sheet = _sheet(tmp_path, [{"subject": "s1", "t1": "a", "t1ce": "b", "t2": "c",
                               "flair": "d"}])
    cfg = tmp_path / "config.yaml"
    runs = {}
    for target in ("head", "brain"):
        cfg.write_text(f"results_dir: {tmp_path}/r\nsamples: {sheet}\natlas: {{path: {atlas}}}\n"
                       f"preprocess: {{atlas_target: {target}}}\n")
        runs[target] = subprocess.run([sys.executable, "-m", "btpipe.cli", "validate",
                                       "--config", str(cfg)], capture_output=True, text=True)
    assert runs["head"].returncode == 1
    assert f"{atlas.parent / 't1_head.nii'} not found" in runs["head"].stderr
    assert "t1_head" not in runs["brain"].stderr


def test_validate_cli_bad_field_one_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("results_dir: r\nseed: -3\n")
    proc = subprocess.run([sys.executable, "-m", "btpipe.cli", "validate", "--config", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "config field seed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --- labels ------------------------------------------------------------------------


def test_regions_and_back_for_each_convention():
    base = np.array([0, 1, 2, 4, 4, 2, 0])
    for name, mapping in (("brats2021", {}), ("brats2023", {4: 3})):
        lab = np.vectorize(lambda v: mapping.get(v, v))(base)
        regions = labels.labels_to_regions(lab, name)
        assert regions[0].tolist() == [False, True, True, True, True, True, False]  # WT
        assert regions[1].tolist() == [False, True, False, True, True, False, False]  # TC
        assert regions[2].tolist() == [False, False, False, True, True, False, False]  # ET
        assert np.array_equal(labels.regions_to_labels(regions, name), lab)


def test_brats2015_non_enhancing_counts_in_core():
    lab = np.array([3, 2, 4, 1])
    wt, tc, et = labels.labels_to_regions(lab, "brats2015")
    assert wt.all() and tc.tolist() == [True, False, True, True] and et.tolist() == [0, 0, 1, 0]
    assert labels.convert_labels(lab, "brats2015", "brats2021").tolist() == [1, 2, 4, 1]


def test_unexpected_label_values_and_bad_mapping():
    assert labels.unexpected_values(np.array([0, 1, 5, 7]), "brats2021") == [5, 7]
    with pytest.raises(ConfigError):
        labels.resolve_convention({1: "TUMOUR"})
    with pytest.raises(ConfigError):
        labels.resolve_convention("brats1999")


def test_brats2024_resection_cavity_is_labelled_but_in_no_region():
    lab = np.array([0, 1, 2, 3, 4])
    wt, tc, et = labels.labels_to_regions(lab, "brats2024")
    assert wt.tolist() == [False, True, True, True, False]
    assert tc.tolist() == [False, True, False, True, False]
    assert et.tolist() == [False, False, False, True, False]
    assert labels.unexpected_values(lab, "brats2024") == []
    assert labels.unexpected_values(lab, "brats2023") == [4]
    # Back to labels: the cavity is not tumour, so it becomes background; 1-3 as in 2023.
    assert labels.regions_to_labels([wt, tc, et], "brats2024").tolist() == [0, 1, 2, 3, 0]
    assert labels.convert_labels(lab, "brats2024", "brats2021").tolist() == [0, 1, 2, 4, 0]
    # A mapping may name the cavity too; 'auto' is resolved from file names, never here.
    assert labels.region_values(labels.resolve_convention({1: "ED", 5: "RC"}))["WT"] == [1]
    with pytest.raises(ConfigError, match="auto"):
        labels.resolve_convention("auto")


def test_scoring_and_labels_config_keys():
    filled = validate_config({"results_dir": "r"})
    assert filled["scoring"]["metrics"] == ["legacy"]
    assert filled["labels"] == "brats2021"
    for value in ("brats2024", "auto", {1: "NCR", 2: "ED", 3: "ET", 4: "RC"}):
        validate_config({"results_dir": "r", "labels": value})
    with pytest.raises(ConfigError, match="scoring.metrics"):
        validate_config({"results_dir": "r", "scoring": {"metrics": ["dice"]}})
    with pytest.raises(ConfigError, match="scoring.metrics"):
        validate_config({"results_dir": "r", "scoring": {"metrics": []}})


# --- atomic writes -----------------------------------------------------------------


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "table.json"
    io.write_json(target, {"a": 1, "nan": float("nan")})
    assert io.read_json(target) == {"a": 1, "nan": None}
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert io.read_json(target) == {"a": 1, "nan": None}
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_atomic_write_survives_kill(tmp_path):
    """kill -9 during a write: the target is the old version or absent, never partial."""
    target = tmp_path / "big.npz"
    code = ("import os, signal\n"
            "from btpipe import io\n"
            f"with io.atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_bytes(b'x' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir()]
    # The orphan temp file is hidden (.tmp-*), never under the target's name.
    assert all(p.name.startswith(io.TMP_PREFIX) for p in leftovers)


def test_file_lock_makes_a_second_process_wait(tmp_path):
    """The pre-training cache relies on this: a job waits while another holds the lock."""
    lock, log = tmp_path / "key.lock", tmp_path / "order.txt"
    code = ("import sys, time\n"
            "from btpipe import io\n"
            f"with io.file_lock({str(lock)!r}):\n"
            f"    open({str(log)!r}, 'a').write(sys.argv[1] + ' in\\n')\n"
            "    time.sleep(float(sys.argv[2]))\n"
            f"    open({str(log)!r}, 'a').write(sys.argv[1] + ' out\\n')\n")
    first = subprocess.Popen([sys.executable, "-c", code, "a", "1.5"])
    while not log.exists():
        time.sleep(0.02)
    second = subprocess.Popen([sys.executable, "-c", code, "b", "0"])
    assert first.wait() == 0 and second.wait() == 0
    assert log.read_text().split("\n")[:4] == ["a in", "a out", "b in", "b out"]


def test_step_log_shows_progress_lines_on_the_console(tmp_path, capfd):
    """Progress lines (btpipe.progress) go to the job's log file and to stderr, where
    Snakemake's console shows them; other messages only to the log file."""
    import logging

    from btpipe.workflow_support import step_log

    log_path = tmp_path / "logs" / "seg_train" / "fold0.log"
    with step_log(log_path):
        logging.getLogger("btpipe.progress.segment").info("step 30/600 (5%%), ETA %.1f min", 9.5)
        logging.getLogger("btpipe.segment.train").info("checkpoint written")
    err = capfd.readouterr().err
    assert "[seg_train/fold0] step 30/600 (5%), ETA 9.5 min" in err
    assert "checkpoint written" not in err
    text = log_path.read_text()
    assert "step 30/600 (5%), ETA 9.5 min" in text and "checkpoint written" in text
    logging.getLogger("btpipe.progress.segment").info("after the step")
    assert "after the step" not in capfd.readouterr().err      # handler removed with the step
