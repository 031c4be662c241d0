"""Progress a cluster's log can read: plain lines every N seconds off a terminal, one redrawn line on one."""
import io

from pipeline.contract.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_progress_is_plain_periodic_lines(monkeypatch):
    monkeypatch.setenv("TSD_PROGRESS_EVERY", "0")
    out = io.StringIO()
    with Progress("generate", 4, unit="shards", stream=out) as bar:
        for _ in range(4):
            bar.update(1, images=32)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5  # one per update, and the last
    assert lines[1].startswith("generate: 2/4 shards (50%), 64 images, ") and "images/s" in lines[1] and "ETA" in lines[1]
    assert "elapsed" in lines[-1]

    monkeypatch.setenv("TSD_PROGRESS_EVERY", "3600")
    quiet = io.StringIO()
    with Progress("verify", 100, unit="shards", stream=quiet) as bar:
        bar.update(100)
    assert quiet.getvalue() == ""  # a quick loop off a terminal says nothing


def test_on_a_terminal_the_line_is_redrawn():
    out = Terminal()
    with Progress("ingest", 3, stream=out) as bar:
        bar.update(3)
    assert out.getvalue().startswith("\r") and out.getvalue().endswith("\n") and "3/3 images" in out.getvalue()


def test_durations_are_rounded_in_one_place():
    from pipeline.contract.progress import duration

    assert duration(51.459999999999994) == "51s"
    assert [duration(s) for s in (0.04, 4.25, 9.96, 59.6, 61, 548, 7500)] == \
        ["0.0s", "4.2s", "10s", "1m00s", "1m01s", "9m08s", "2h05m"]


def test_a_callers_eta_replaces_the_rate_one():
    out = io.StringIO()
    bar = Progress("generate", 10, unit="shards", stream=out)
    bar.update(1)
    assert "ETA" in bar.line()
    bar.set_eta(125.0)
    assert "ETA 2m05s" in bar.line()
    bar.update(9)
    assert "ETA" not in bar.line()   # finished: no ETA
