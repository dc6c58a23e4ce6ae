"""place_file's promises that no daemon test can time: a name taken between the check and the rename."""

from __future__ import annotations

import os

import pytest

from rfwatch.files import place as fileops
from rfwatch.files.place import place_file

THEIRS = b"somebody else's file, written at the worst moment"
OURS = b"the file rfwatch is placing"


@pytest.mark.parametrize("keep_source", [False, True], ids=["move", "copy"])
@pytest.mark.parametrize("rename", ["renameat2", "link"])
def test_a_file_that_appears_at_the_target_after_the_check_is_never_replaced(
    tmp_path, monkeypatch, keep_source, rename
):
    """The check (lexists) says the name is free; another program creates it before the rename: it stays."""
    if rename == "link":
        monkeypatch.setattr(fileops, "_renameat2", None)  # filesystems without RENAME_NOREPLACE: link + unlink
    src = tmp_path / "inbox" / "x.jpg"
    src.parent.mkdir()
    src.write_bytes(OURS)
    dst = tmp_path / "sorted" / "x.jpg"
    real_lexists = os.path.lexists
    raced = []

    def lexists_then_race(path):
        if os.fspath(path) == os.fspath(dst) and not raced:
            assert not real_lexists(path)
            dst.write_bytes(THEIRS)  # the other writer, right after our check...
            raced.append(path)
            return False  # ...which saw the name free
        return real_lexists(path)

    monkeypatch.setattr(fileops.os.path, "lexists", lexists_then_race)
    placed = place_file(src, dst, keep_source=keep_source)
    monkeypatch.undo()
    assert raced, "the race was not staged: place_file never checked the target"
    assert dst.read_bytes() == THEIRS, "the file that appeared at the target was replaced"
    assert placed.path == dst.with_name("x (1).jpg") and placed.outcome == ("copied" if keep_source else "moved")
    assert placed.path.read_bytes() == OURS
    assert src.exists() == keep_source
    assert sorted(p.name for p in dst.parent.iterdir()) == ["x (1).jpg", "x.jpg"], "a temporary file was left"
