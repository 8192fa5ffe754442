"""Instances from a watched file: a YAML (or JSON, which YAML reads) list of instances with the fields of a
pool's `instances` (host, port, weight, id, zone, priority, draining).

The file is polled (`os.stat` every `poll_interval_s`: no inotify dependency, and it works on every file system,
ConfigMap volumes' symlink swaps included). A change is applied once the file has stayed the same for
`debounce_s`, so an editor's truncate-then-write, or several writes, is one change. A file with errors (not
YAML, not a list, a bad field, duplicate ids, empty) is refused with the config loader's `field.path: message`
problems and the last good set stays; the same broken file is reported once, not on every poll.
"""

from __future__ import annotations

import asyncio
import os

import yaml
from pydantic import Field, ValidationError

from gatewatch.balancer.config import FileDiscoveryConfig, InstanceConfig
from gatewatch.balancer.discovery import Failed, Found, Publish
from gatewatch.config_problems import pydantic_problems
from gatewatch.schema import Strict
from gatewatch.telemetry.names import DiscoveryResult, DiscoverySource

MAX_FILE_BYTES = 16 * 1024 * 1024


class InstanceFile(Strict):
    """The file's content, as a model so that problems carry their path (`instances[2].port`)."""

    instances: tuple[InstanceConfig, ...] = Field(min_length=1)


class FileProblem(Exception):
    def __init__(self, result: DiscoveryResult, problems: list[str]):
        super().__init__("; ".join(problems))
        self.result = result
        self.problems = problems


def load_instances(path: str) -> tuple[InstanceConfig, ...]:
    """Read and validate the file (blocking: call it in a thread). Raises FileProblem."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise FileProblem(DiscoveryResult.ERROR, [f"(file): cannot read: {err.strerror or err}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FileProblem(DiscoveryResult.INVALID, [f"(file): larger than {MAX_FILE_BYTES} bytes"])
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FileProblem(DiscoveryResult.INVALID, ["(file): not UTF-8 text"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise FileProblem(DiscoveryResult.INVALID,
                          [f"{where}: invalid YAML: {getattr(err, 'problem', None) or err}"]) from None
    if not isinstance(data, list):
        raise FileProblem(DiscoveryResult.INVALID, [
            "(root): expected a list of instances (- host: ..., port: ...), got "
            + ("an empty file" if data is None else type(data).__name__)])
    try:
        instances = InstanceFile.model_validate({"instances": data}).instances
    except ValidationError as err:
        raise FileProblem(DiscoveryResult.INVALID, pydantic_problems(err, InstanceFile)) from None
    seen: dict[str, int] = {}
    problems = []
    for i, inst in enumerate(instances):
        if inst.instance_id in seen:
            first = seen[inst.instance_id]
            problems.append(f"instances[{i}]: duplicate instance {inst.instance_id!r} (as instances[{first}])")
        seen.setdefault(inst.instance_id, i)
    if problems:
        raise FileProblem(DiscoveryResult.INVALID, problems)
    return instances


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap's ..data swap changes the target's inode
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class FileSource:
    kind = DiscoverySource.FILE

    def __init__(self, cfg: FileDiscoveryConfig):
        self.cfg = cfg
        self.path = cfg.path

    async def run(self, publish: Publish) -> None:
        cfg = self.cfg
        applied: tuple | None | str = "never"  # the signature last loaded (good or bad)
        first = True
        while True:
            sig = _signature(self.path)
            if sig != applied:
                if not first:  # settle: apply once the file has stopped changing for debounce_s
                    while True:
                        await asyncio.sleep(cfg.debounce_s)
                        now = _signature(self.path)
                        if now == sig:
                            break
                        sig = now
                why = "loaded" if first else "changed"
                first = False
                applied = sig
                try:
                    instances = await asyncio.to_thread(load_instances, self.path)
                except FileProblem as p:
                    publish(Failed(p.result, f"file {self.path}: " + "; ".join(p.problems[:20])))
                else:
                    publish(Found(instances, f"file {self.path} {why}"))
            await asyncio.sleep(cfg.poll_interval_s)
