"""The Stage I cache (issue 13, item 6): an entry whose bytes changed, that is truncated or
malformed, or that holds impossible values is a miss, recomputed and overwritten with one warning
line, never "cached" and never a traceback; --strict-images is not bypassed by a cache hit.

Before: negated statistics and a replaced golden classifier were used silently ("cached") and
copied into the run; a truncated or malformed entry gave a traceback on every later distill;
--strict-images was ignored on a hit."""

from __future__ import annotations

import json
import shutil

import pytest
from _crafted import one_line_error
from _rundirs import cache_entry, distill, outside, rehash_file, rewrite, tree

from edgedd.distillation.rundir import GOLDEN_FILE, STAGE1_JSON, STATS_FILE


def _negate(t):
    for k in ("sums", "centres", "flow"):
        t[k] = -t[k]


def _nan(t):
    t["sums"][0, 0] = float("nan")


def _inf_weight(t):
    t["weight"][1, 2] = float("inf")


def _float_counts(t):
    t["counts"] = t["counts"].double()


def _zero_count(t):
    t["counts"][0] = 0


def _wrong_shape(t):
    t["weight"] = t["weight"][:, :-1].contiguous()


def _truncate(entry):
    p = entry / STATS_FILE
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage_rehashed(entry):  # bytes that are no safetensors, with their checksum recorded
    (entry / GOLDEN_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    rehash_file(entry / GOLDEN_FILE)


def _truncated_json(entry):
    p = entry / STAGE1_JSON
    p.write_bytes(p.read_bytes()[:100])


def _json_list(entry):
    (entry / STAGE1_JSON).write_text("[1, 2]")


def _no_checksums(entry):  # an entry written before checksums existed
    meta = json.loads((entry / STAGE1_JSON).read_text())
    del meta["sha256"]
    (entry / STAGE1_JSON).write_text(json.dumps(meta))


def _missing_golden(entry):
    (entry / GOLDEN_FILE).unlink()


def _golden_is_a_directory(entry):
    (entry / GOLDEN_FILE).unlink()
    (entry / GOLDEN_FILE).mkdir()


CASES = {
    # changed bytes, checksum as saved: the hash stops them
    "negated statistics": (lambda e: rewrite(e / STATS_FILE, _negate), "does not match its checksum"),
    "replaced golden classifier": (
        lambda e: rewrite(e / GOLDEN_FILE, lambda t: t["weight"].zero_()),
        "does not match its checksum",
    ),
    "truncated stats": (_truncate, "does not match its checksum"),
    "missing golden": (_missing_golden, "golden_classifier.safetensors"),
    "golden is a directory": (_golden_is_a_directory, "not a regular file"),
    "truncated stage1.json": (_truncated_json, "stage1.json is unreadable"),
    "stage1.json not an object": (_json_list, "not a JSON object"),
    "no checksums": (_no_checksums, "no checksums"),
    # checksum re-recorded: only the checks after the hash can stop them
    "malformed safetensors": (_garbage_rehashed, "is malformed"),
    "NaN statistics": (lambda e: rewrite(e / STATS_FILE, _nan, rehash=True), "non-finite"),
    "Inf classifier": (lambda e: rewrite(e / GOLDEN_FILE, _inf_weight, rehash=True), "non-finite"),
    "float counts": (lambda e: rewrite(e / STATS_FILE, _float_counts, rehash=True), "counts is missing or not int64"),
    "zero count": (lambda e: rewrite(e / STATS_FILE, _zero_count, rehash=True), "count is not positive"),
    "wrong classifier shape": (
        lambda e: rewrite(e / GOLDEN_FILE, _wrong_shape, rehash=True),
        "weight is missing or not float32 (3, 64)",
    ),
}


@pytest.fixture
def first_run(image_folder, tmp_path):
    r = distill(image_folder, tmp_path / "run1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["stage1_cached"] is False
    entry = cache_entry()
    return tmp_path / "run1", entry, tree(entry)


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_cache_entry_is_a_miss_and_is_rebuilt(
    case, first_run, image_folder, tmp_path, tmp_path_factory, opened
):
    run1, entry, clean = first_run
    damage, reason = CASES[case]
    damage(entry)
    untouched = tree(run1)
    with opened:
        r = distill(image_folder, tmp_path / "run2", "--json")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output[-2000:]
    # one warning line naming the entry and what is wrong; computed, not "cached"
    assert (
        r.stderr.count("\n") == 1 and r.stderr.startswith("warning: the Stage I files in ") and str(entry) in r.stderr
    ), r.stderr
    assert reason in r.stderr, (reason, r.stderr)
    assert json.loads(r.stdout)["stage1_cached"] is False
    # the entry is rewritten whole (stage1.json differs only in its timings), and the run has the clean statistics
    now = tree(entry)
    assert {k: v for k, v in now.items() if k != STAGE1_JSON} == {k: v for k, v in clean.items() if k != STAGE1_JSON}
    for f in (STATS_FILE, GOLDEN_FILE):
        assert (tmp_path / "run2" / f).read_bytes() == clean[f], f
    assert (tmp_path / "run2" / "synthetic.safetensors").read_bytes() == (run1 / "synthetic.safetensors").read_bytes()
    # nothing outside the run, the cache and the data was opened, and the other run is as it was
    assert (
        outside(
            opened.seen, tmp_path_factory.getbasetemp(), tmp_path / "run2", entry.parent.parent.parent, image_folder
        )
        == []
    )
    assert tree(run1) == untouched
    # and the rebuilt entry is a clean hit, without a warning
    r = distill(image_folder, tmp_path / "run3", "--json")
    assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["stage1_cached"] is True, r.stderr


def test_strict_images_is_not_bypassed_by_a_cache_hit(image_folder, tmp_path):
    (image_folder / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    r = distill(image_folder, tmp_path / "lenient", "--json")
    assert r.exit_code == 0 and "warning: skipped 1 unreadable image(s)" in r.stderr
    assert json.loads((cache_entry() / STAGE1_JSON).read_text())["skipped_images"]
    # before: exit 0, "cached", the unreadable image silently accepted
    r = distill(image_folder, tmp_path / "strict", "--strict-images", "--json")
    one_line_error(r, "cannot read image", "broken.png")
    assert not (tmp_path / "strict" / "synthetic.safetensors").exists()
    # a clean entry (no skipped images) is still a hit under --strict-images
    (image_folder / "square" / "broken.png").unlink()
    shutil.rmtree(tmp_path / "strict")
    r = distill(image_folder, tmp_path / "strict", "--strict-images", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stage1_cached"] is False  # another fingerprint: the pass runs
    r = distill(image_folder, tmp_path / "strict2", "--strict-images", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stage1_cached"] is True and r.stderr == ""


def test_a_resumed_run_with_damaged_stage1_files_recomputes_them(image_folder, tmp_path):
    out = tmp_path / "run"
    r = distill(image_folder, out, "--stop-after", "2", "--no-cache")
    assert r.exit_code == 0, r.stderr
    clean = (out / STATS_FILE).read_bytes()
    rewrite(out / STATS_FILE, _negate)  # the run's own copy, checksum as saved
    r = distill(image_folder, out, "--resume", "--no-cache", "--json")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output[-2000:]
    assert r.stderr.count("\n") == 1 and "does not match its checksum" in r.stderr and str(out) in r.stderr, r.stderr
    assert json.loads(r.stdout)["stage1_cached"] is False
    assert (out / STATS_FILE).read_bytes() == clean
