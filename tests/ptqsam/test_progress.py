"""Progress bars: one switch silences every bar, and restores the previous setting."""

from __future__ import annotations

import io

from ptqsam.progress import bar, silenced


def _drawn(**options) -> str:
    out = io.StringIO()
    for _ in bar(range(3), file=out, desc="work", **options):
        pass
    return out.getvalue()


def test_silenced_turns_every_bar_off_and_restores():
    assert "work" in _drawn() and _drawn(enabled=False) == ""
    with silenced():
        assert _drawn() == ""
        with silenced(False):
            assert "work" in _drawn()
        assert _drawn() == ""
    assert "3/3" in _drawn()
