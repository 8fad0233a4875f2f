"""What stands at a path, and what the host refuses: a FIFO or directory where a file is expected,
permission denied, an output or cache directory that is a file, a full disk, non-UTF-8 names,
a symlinked --out. Each gets one line naming the path and the fix (or works), never a traceback.

Root ignores permission bits: as root the permission test drops that power with setpriv (tests/hostile/
_crafted.DROP_DAC) and skips where setpriv is missing."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil

import pytest
from _crafted import DROP_DAC, one_line_error, one_line_error_proc, run_cli
from conftest import make_image_folder, tiny_distill_args
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.images import scan_image_folder

# Root ignores permission bits; DROP_DAC runs the CLI without that power (setpriv), else these skip.
needs_permissions = pytest.mark.skipif(
    DROP_DAC is None, reason="root without setpriv ignores permission bits: nothing can be denied to it"
)


def test_predict_refuses_a_fifo_named_png_without_waiting_on_it(bundle, packed, tmp_path):
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading the usual way blocks forever
    p = run_cli(["predict", bundle, fifo], timeout=60)
    one_line_error_proc(p, str(fifo), "is a FIFO (named pipe), not a file")


def test_a_directory_or_missing_path_where_a_file_is_expected_is_named_as_such(bundle, packed, tmp_path):
    folder = tmp_path / "photo.png"
    folder.mkdir()
    runner = CliRunner()
    one_line_error(runner.invoke(app, ["predict", str(bundle), str(folder)]), "is a directory, not a file")
    one_line_error(runner.invoke(app, ["predict", str(bundle), str(tmp_path / "gone.png")]), "does not exist")
    os.mkfifo(tmp_path / "art")
    one_line_error(
        runner.invoke(app, ["inspect", str(tmp_path / "art")]), "artifact", "is a FIFO (named pipe), not a file"
    )
    one_line_error(
        runner.invoke(app, ["inspect", str(folder)]), "artifact", "does not exist"
    )  # a directory without an artifact
    one_line_error(
        runner.invoke(app, ["deploy-check", str(bundle), "--data", str(tmp_path / "art")]),
        "--data",
        "is a FIFO (named pipe), not a directory",
    )
    one_line_error(
        runner.invoke(app, ["deploy-check", str(bundle), "--data", str(tmp_path / "nowhere")]),
        "--data",
        "does not exist",
    )


@needs_permissions
def test_permission_denied_is_said_so(bundle, packed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(packed["heldout"], data)
    (data / "circle").chmod(0)  # rglob silently skipped it: "holds no images" was the message
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error_proc(
            run_cli(["deploy-check", bundle, "--data", data], wrap=DROP_DAC),
            "class folder",
            "circle",
            "permission denied",
            "chmod",
        )
        one_line_error_proc(
            run_cli(["export-data", packed["heldout"], ro / "out"], wrap=DROP_DAC),
            str(ro),
            "Permission denied",
            "make it writable",
        )
    finally:
        (data / "circle").chmod(0o755)
        ro.chmod(0o755)


@needs_permissions
def test_a_read_only_cache_directory_stops_distill_before_model_work(image_folder, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        p = run_cli(
            tiny_distill_args(image_folder, tmp_path / "run"),
            env={"EDGEDD_CACHE_DIR": str(ro / "cache")},
            wrap=DROP_DAC,
        )
        one_line_error_proc(p, "the cache directory", str(ro / "cache"), "Permission denied", "--no-cache")
        assert not (tmp_path / "run").exists()
    finally:
        ro.chmod(0o755)


def test_deploy_check_with_one_class_of_data_runs_and_says_why_it_cannot_judge(bundle, packed, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(packed["heldout"] / "square", one / "square")
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(one), "--json"])
    assert r.exit_code == 3, (r.exit_code, r.stderr)  # it ran: a failed check, not "needs 2 classes"
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert "data accuracy" in checks and not checks["above chance"]["ok"]
    detail = checks["above chance"]["detail"]
    # more images of the same class would not help: the detail names the real fix
    assert (
        "one class" in detail
        and "at least two of the bundle's classes" in detail
        and "more --data images" not in detail
    ), detail


@needs_permissions
def test_predict_and_inspect_on_an_unreadable_file_say_so(bundle, packed, tmp_path):
    img, artifact = tmp_path / "locked.png", tmp_path / "locked.safetensors"
    shutil.copy(next((packed["heldout"] / "square").iterdir()), img)
    shutil.copy(bundle / "edgedd.artifact.safetensors", artifact)
    img.chmod(0)
    artifact.chmod(0)
    try:  # before: Typer's own path check, exit 2 with Click's message and no fix
        one_line_error_proc(run_cli(["predict", bundle, img], wrap=DROP_DAC), str(img), "permission denied", "chmod")
        one_line_error_proc(
            run_cli(["inspect", artifact], wrap=DROP_DAC), "artifact", str(artifact), "permission denied", "chmod"
        )
        bundle.chmod(0)
        one_line_error_proc(
            run_cli(["predict", bundle, img], wrap=DROP_DAC), "bundle", str(bundle), "permission denied", "chmod"
        )
    finally:
        bundle.chmod(0o755)
        img.chmod(0o644)
        artifact.chmod(0o644)


def test_a_cache_directory_that_is_a_file_stops_distill_before_model_work(image_folder, tmp_path, monkeypatch):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a directory")
    for cache in (blocker, blocker / "below"):
        monkeypatch.setenv("EDGEDD_CACHE_DIR", str(cache))
        r = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / f"run-{cache.name}"))
        one_line_error(r, "the cache directory", str(cache), "EDGEDD_CACHE_DIR", "--no-cache")
        assert not (tmp_path / f"run-{cache.name}").exists()  # refused before the run directory was made
    assert blocker.read_text() == "not a directory"


def test_an_output_under_a_file_is_one_line(packed, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_error(
        CliRunner().invoke(app, ["export-data", str(packed["heldout"]), str(blocker / "out")]),
        str(blocker),
        "a file stands where a directory is needed",
    )


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(bundle, packed, tmp_path):
    fsize = [(resource.RLIMIT_FSIZE, 4096)]  # every write past 4 KiB fails with EFBIG, as on a full disk
    (bundle / "projector.fit.fp32.safetensors").unlink(missing_ok=True)
    before = sorted(p.name for p in bundle.iterdir())
    one_line_error_proc(
        run_cli(["deploy-check", bundle], limits=fsize),
        "projector.fit.fp32.safetensors",
        "File too large",
        "free space",
    )
    assert sorted(p.name for p in bundle.iterdir()) == before  # no fit, no temporary
    out = tmp_path / "export"
    one_line_error_proc(
        run_cli(["export-data", packed["heldout"], out], limits=[(resource.RLIMIT_FSIZE, 64)]), str(out), "free space"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # neither the export nor its temporary


def _non_utf8_folder(root):
    make_image_folder(root, per_class=3)
    os.rename(root / "circle", os.path.join(os.fsencode(root), b"circ\xffle\x1b[31m"))  # Latin-1 byte + an ANSI escape
    first = sorted((root / "square").iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(root / "square"), b"0\xfe0" + os.fsencode(first.suffix)))
    return root


def test_non_utf8_names_work_and_print_escaped_under_a_strict_locale(tmp_path):
    data = _non_utf8_folder(tmp_path / "data")
    src = scan_image_folder(data)  # the fingerprint hashed a name that is not UTF-8: it used to raise
    assert "circ\udcffle\x1b[31m" in src.class_names and len(src.paths) == 9
    r = CliRunner().invoke(app, ["export-data", str(data), str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["class_counts"]["circ\udcffle\x1b[31m"] == 3, r.output


def test_utf8_names_keep_their_fingerprint(image_folder):
    h = hashlib.sha256()  # the formula before non-UTF-8 names were handled: existing caches stay valid
    for p in sorted(image_folder.rglob("*.*")):
        st = p.stat()
        h.update(f"{p.relative_to(image_folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    assert scan_image_folder(image_folder).fingerprint == "folder:" + h.hexdigest()


def test_overwrite_through_a_symlinked_out_replaces_what_it_points_to(packed, tmp_path):
    """pack and export-data build a sibling and rename it over --out (atomic.real_out, replace_dir);
    through a link that renamed the link and left it behind as a temporary. export-data here: the
    same two helpers as pack, without pack's model work."""
    real = tmp_path / "real"
    assert CliRunner().invoke(app, ["export-data", str(packed["heldout"]), str(real), "--limit", "3"]).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    r = CliRunner().invoke(app, ["export-data", str(packed["heldout"]), str(link), "--overwrite", "--limit", "6"])
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link kept, the export behind it replaced
    assert sum(1 for _ in real.rglob("*.png")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no temporary left


def test_a_full_disk_during_distill_is_one_line(image_folder, tmp_path):
    """The Stage I feature array (a memmap) and every atomic write: EFBIG under a 4 KiB file-size limit."""
    cache = tmp_path / "cache"
    p = run_cli(
        tiny_distill_args(image_folder, tmp_path / "run"),
        env={"EDGEDD_CACHE_DIR": str(cache)},
        limits=[(resource.RLIMIT_FSIZE, 4096)],
    )
    one_line_error_proc(p, "cannot write the Stage I features in", str(cache), "File too large", "free space")
