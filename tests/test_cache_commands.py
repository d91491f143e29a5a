"""``hf-pcoh cache list`` and ``hf-pcoh cache clear``: the teacher-feature caches a run wrote, one line each, and
their removal (all, by fingerprint, by teacher, or a dry run), never touching anything else in the datasets cache."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import pytest

from hf_pcoh.cli import main
from hf_pcoh.config import DistillationConfig
from hf_pcoh.setup import build_setup
from hf_pcoh.teacher_cache_store import RECORD_FILE, auto_cache_dir

from tiny_models import MINILM, TINY_BERT

LINE = re.compile(r"^(?P<fingerprint>[0-9a-f]{24})  (?P<teacher>.+?)  layers (?P<layers>\S+)  "
                  r"(?:(?P<rows>[\d,]+) rows|rows unknown)  (?P<size>[\d.]+ [kMG]?B)  created (?P<created>\S+)  "
                  r"(?P<folder>\S+)(?P<incomplete>  \[incomplete: an interrupted pass\])?$")


def cache_teacher_features(output_dir: Path, cache_dir: str, teacher_layers: list[str]) -> None:
    """A tiny run's setup with --teacher_cache: the teacher's features of 32 glosses, cached under ``cache_dir``."""
    build_setup(DistillationConfig(
        output_dir=str(output_dir), teacher_config=TINY_BERT, teacher_processor_name_or_path=MINILM,
        student_config={"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}, max_train_samples=32,
        per_device_train_batch_size=16, max_steps=2, max_length=32, losses=["perception_coherence"],
        student_layers=["1", "last"], teacher_layers=teacher_layers, evaluate_after_training=False,
        teacher_cache=cache_dir, report_to="none", seed=0))


def listed(capsys, *arguments: str) -> dict[str, dict[str, str]]:
    """``hf-pcoh cache list``'s complete caches by fingerprint (every line checked whole), its summary line aside."""
    assert main(["cache", "list", *arguments]) == 0
    *lines, summary = capsys.readouterr().out.strip().splitlines()
    assert re.match(rf"^{len(lines)} teacher-feature cache\(s\), ", summary), summary
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return {match["fingerprint"]: match.groupdict() for match in parsed if not match["incomplete"]}


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "hf_datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(folder))
    return folder


def test_cache_list_and_clear_touch_only_hf_pcohs_caches(tmp_path, minilm_path, datasets_cache, capsys) -> None:
    cache_dir, own_dir = auto_cache_dir(), str(tmp_path / "my_cache")
    cache_teacher_features(tmp_path / "a", cache_dir, ["1", "last"])
    cache_teacher_features(tmp_path / "b", cache_dir, ["2", "last"])
    cache_teacher_features(tmp_path / "c", own_dir, ["1", "2"])
    # what must never be touched: the datasets cache's own entries, and what is not a cache in hf_pcoh's folder
    others = [datasets_cache / "wordnet___glosses" / "default" / "data.arrow",
              Path(cache_dir) / "notes" / "read_me.txt",
              Path(cache_dir) / ("0123456789abcdef01234567") / "not_a_cache.txt"]
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep me", encoding="utf-8")
    os.symlink(others[0].parent, Path(cache_dir) / "89abcdef0123456789abcdef")  # a link named like a cache
    leftover = Path(cache_dir) / "fedcba9876543210fedcba98.partial"  # an interrupted save: hf_pcoh's, removable
    leftover.mkdir()
    (leftover / "data-00000-of-00001.arrow").write_bytes(b"half written")

    caches = listed(capsys)
    assert len(caches) == 2 and all(entry["folder"].startswith(cache_dir) for entry in caches.values())
    assert {entry["layers"] for entry in caches.values()} == {"1,last", "2,last"}
    for fingerprint, entry in caches.items():
        assert entry["teacher"] == "a bert model built from a config" and entry["rows"] == "32"
        record = json.loads((Path(cache_dir) / fingerprint / RECORD_FILE).read_text())
        assert record["fingerprint"] == fingerprint and record["rows"] == 32
        assert entry["created"] == record["created"]
    assert main(["cache", "list"]) == 0 and "[incomplete: an interrupted pass]" in capsys.readouterr().out
    with_own = listed(capsys, "--cache_dir", own_dir)
    assert len(with_own) == 3 and sum(entry["folder"].startswith(own_dir) for entry in with_own.values()) == 1

    # a dry run, or a teacher that has no cache, removes nothing
    before = sorted(os.listdir(cache_dir))
    assert main(["cache", "clear", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("would remove ") == 4 and sorted(os.listdir(cache_dir)) == before  # 2 caches, leftover, total
    assert main(["cache", "clear", "--teacher", "sentence-transformers/*"]) == 0
    assert "removed 0 teacher-feature cache(s)" in capsys.readouterr().out and sorted(os.listdir(cache_dir)) == before
    # one cache by the first digits of its fingerprint
    first = sorted(caches)[0]
    assert main(["cache", "clear", first[:8]]) == 0
    assert f"removed {first}" in capsys.readouterr().out
    assert not (Path(cache_dir) / first).exists() and set(listed(capsys)) == set(caches) - {first}
    # the rest of hf_pcoh's caches by teacher (the leftover names none), then the user's folder by fingerprint
    assert main(["cache", "clear", "--teacher", "a bert model*"]) == 0
    assert "removed 1 teacher-feature cache(s)" in capsys.readouterr().out and len(listed(capsys)) == 0
    assert main(["cache", "clear", "--cache_dir", own_dir]) == 0
    assert "removed 2 teacher-feature cache(s)" in capsys.readouterr().out  # the leftover and the user's folder's
    assert os.listdir(own_dir) == [] and not leftover.exists()
    assert all(path.read_text(encoding="utf-8") == "keep me" for path in others)
    assert (Path(cache_dir) / "89abcdef0123456789abcdef").is_symlink()  # the link, and what it points to, stay
    assert sorted(os.listdir(cache_dir)) == ["0123456789abcdef01234567", "89abcdef0123456789abcdef", "notes"]


def test_a_fingerprint_that_is_not_one_is_refused_in_one_line(datasets_cache, capsys) -> None:
    assert main(["cache", "clear", "not-hex"]) == 2
    assert capsys.readouterr().err.strip() == ("error: 'not-hex' is not a fingerprint (hexadecimal digits, as "
                                               "`hf-pcoh cache list` shows them)")
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.startswith("0 teacher-feature cache(s), 0 B on disk, under ")
