"""The JSON-lines exporter (no OTLP endpoint): bounded files, and a failed rotation never stops the export."""

from __future__ import annotations

from gatewatch.telemetry.export import JsonLinesExporter


class Item:
    def __init__(self, n: int):
        self.n = n

    def to_json(self, indent=None) -> str:
        return '{"n": %d,\n "pad": "%s"}' % (self.n, "x" * 100)


def test_rotates_to_one_previous_file(tmp_path):
    path = tmp_path / "t.traces.jsonl"
    exp = JsonLinesExporter(path, max_bytes=1000)
    for i in range(30):
        assert exp.export([Item(i)])
    exp.shutdown()
    current = path.read_text().splitlines()
    previous = path.with_suffix(".jsonl.1").read_text().splitlines()
    assert current and previous and all(line.startswith('{"n": ') for line in current + previous)
    assert int(current[-1].split(":")[1].split(",")[0]) == 29  # the newest item is in the current file


def test_a_failed_rotation_keeps_the_exporter_writing(tmp_path):
    path = tmp_path / "t.logs.jsonl"
    exp = JsonLinesExporter(path, max_bytes=300)
    assert exp.export([Item(0), Item(1)])
    path.unlink()  # another process rotated or removed it: os.replace will fail
    assert exp.export([Item(2)]) and exp.export([Item(3)])
    exp.shutdown()
    assert '"n": 3' in path.read_text()
