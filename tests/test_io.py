"""ml_patterns.io: atomic writes with the user's umask, what a staged directory may replace, leftovers."""

import os
import stat
import subprocess
import sys

import pytest

from ml_patterns.errors import DestinationError, DestinationExistsError
from ml_patterns.io import _host, atomic_write_text, check_destination, clean_leftovers, staged_directory


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it (tests run in one thread)."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)]
)
def test_outputs_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "report.md", "hello\n")
    with staged_directory(tmp_path / "a" / "b" / "out") as staging:
        atomic_write_text(staging / "x.json", "{}\n")
        (staging / "sub").mkdir()
    assert mode(tmp_path / "report.md") == file_mode
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == dir_mode  # created parents too
    assert mode(tmp_path / "a" / "b" / "out") == dir_mode
    assert mode(tmp_path / "a" / "b" / "out" / "x.json") == file_mode


def test_a_failed_block_leaves_nothing_not_even_the_parents_it_created(tmp_path):
    with pytest.raises(KeyboardInterrupt, match="^$"), staged_directory(tmp_path / "new" / "deeper" / "out") as staging:
        atomic_write_text(staging / "half.json", "{")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_a_failed_publish_puts_the_old_copy_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"), staged_directory(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["old.txt"]


def test_overwrite_replaces_a_directory_only_if_the_caller_says_it_wrote_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")

    def foreign(directory):
        return None if (directory / "MARKER").is_file() else "no MARKER in it"

    with pytest.raises(DestinationError, match="refusing to replace .*out: no MARKER in it"):
        check_destination(out, overwrite=True, foreign=foreign)
    (out / "MARKER").touch()
    with staged_directory(out, overwrite=True, foreign=foreign) as staging:
        (staging / "MARKER").touch()
    assert os.listdir(out) == ["MARKER"]


@pytest.mark.parametrize(
    "make, kind",
    [(lambda p: p.write_text("x"), "not a directory"), (lambda p: p.symlink_to(p.parent), "a symbolic link")],
)
def test_overwrite_never_replaces_a_file_or_a_link(tmp_path, make, kind):
    make(tmp_path / "out")
    with pytest.raises(DestinationError, match=f"refusing to replace .*out: it is {kind}"):
        check_destination(tmp_path / "out", overwrite=True)


def test_existing_destination_names_both_wordings(tmp_path):
    with pytest.raises(DestinationExistsError, match=r"pass overwrite=True") as caught:
        check_destination(tmp_path)
    assert isinstance(caught.value, FileExistsError)
    assert caught.value.cli_message == f"{tmp_path} already exists (pass --overwrite to replace it)"


@pytest.mark.parametrize("relative", [".", "..", "sub/..", "/"])
def test_the_working_directory_and_what_holds_it_are_refused(tmp_path, monkeypatch, relative):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if relative == ".." else tmp_path)
    with pytest.raises(DestinationError, match="refusing to write to"):
        check_destination(relative, overwrite=True)


def test_a_path_through_a_symlinked_parent_is_recognised(tmp_path, monkeypatch):
    (tmp_path / "real" / "work").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path / "real" / "work")
    with pytest.raises(DestinationError, match="working directory"):
        check_destination(tmp_path / "link" / "work", overwrite=True)


def test_protected_paths_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    source = tmp_path / "data" / "mols.csv"
    source.write_text("smiles\n")
    for out in (tmp_path / "data", source, tmp_path):
        with pytest.raises(DestinationError, match="mols.csv, which must be kept"):
            check_destination(out, overwrite=True, protect=[source])


def dead_pid():
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_runs_are_removed_live_ones_and_other_machines_kept(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    host = _host()
    dead = tmp_path / f".ds.{host}.{dead_pid()}-0a1b2c3d.partial"
    live = tmp_path / f".ds.{host}.{os.getppid()}-0a1b2c3d.partial"
    elsewhere = tmp_path / f".ds.another-machine.{dead_pid()}-0a1b2c3d.partial"
    old = tmp_path / f".ds.{host}.{dead_pid()}.old"
    old_unnamed_host = tmp_path / f".ds.{dead_pid()}.old"  # as versions before the host was added named it
    other = tmp_path / ".other.1.old"
    for directory in (dead, live, elsewhere, old, old_unnamed_host, other):
        directory.mkdir()
    clean_leftovers(out)
    assert sorted(os.listdir(tmp_path)) == sorted(["ds", live.name, elsewhere.name, other.name])


def test_what_a_killed_run_leaves_the_next_run_removes(tmp_path):
    killed = (
        "import os, sys; from ml_patterns.io import staged_directory\n"
        "with staged_directory(sys.argv[1]) as staging:\n"
        "    (staging / 'half.json').write_text('{')\n"
        "    os._exit(9)  # no cleanup runs, as after a SIGKILL\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", killed, str(tmp_path / "ds")], env=env, check=False).returncode == 9
    [leftover] = os.listdir(tmp_path)
    assert leftover.startswith(".ds.") and leftover.endswith(".partial")
    with staged_directory(tmp_path / "ds") as staging:
        (staging / "done.json").write_text("{}")
    assert os.listdir(tmp_path) == ["ds"]


def test_an_old_copy_whose_replacement_never_landed_is_reported_not_deleted(tmp_path):
    old = tmp_path / f".ds.{_host()}.{dead_pid()}.old"
    old.mkdir()
    with pytest.warns(UserWarning, match=r"holds the previous ds from an interrupted replacement; rename it"):
        clean_leftovers(tmp_path / "ds")
    assert old.is_dir()


def test_legacy_staging_directories_are_reported(tmp_path):
    (tmp_path / ".ds.k2j4_x9q.partial").mkdir()
    with pytest.warns(UserWarning, match=r"\.ds\.k2j4_x9q\.partial is left over from an interrupted run"):
        clean_leftovers(tmp_path / "ds")


def test_unwritable_destination_is_one_clear_error(tmp_path):
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("needs Linux's /sys, which refuses new entries even to root")
    refused = r"cannot create /sys/ml-patterns-test/ds: (Operation not permitted|Permission denied)"
    with pytest.raises(DestinationError, match=refused), staged_directory("/sys/ml-patterns-test/ds"):
        pass
