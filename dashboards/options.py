"""What a `gatewatch dashboards build` may be told: the SLOs the boards and alert rules measure against.

Primitives: `BuildOptions` (typed, frozen, `extra="forbid"`), `load_options(path)` (a small YAML file; errors name
the field), `DEFAULT`. Example file:

    slo:
      availability_percent: 99.9     # edge requests answered without a 5xx
      latency_threshold_s: 0.5       # must be a bucket boundary of telemetry.names.DURATION_BUCKETS_S
      latency_percent: 99            # share of edge requests faster than the threshold
    grafana_url: http://localhost:3000  # alert annotations link to dashboards here
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gatewatch.telemetry.names import DURATION_BUCKETS_S


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SloOptions(_Strict):
    availability_percent: float = Field(99.9, gt=0, lt=100)
    latency_threshold_s: float = 0.5
    latency_percent: float = Field(99.0, gt=0, lt=100)

    @field_validator("latency_threshold_s")
    @classmethod
    def _bucket(cls, v: float) -> float:
        # A latency SLI counts requests in the `le` bucket: any other threshold could not be measured exactly.
        if v not in DURATION_BUCKETS_S:
            raise ValueError(f"must be one of the histogram's bucket boundaries {list(DURATION_BUCKETS_S)}")
        return v

    @property
    def error_budget(self) -> float:
        """Allowed share of bad requests, e.g. 0.001 for 99.9 %."""
        return round(1 - self.availability_percent / 100, 10)

    @property
    def latency_budget(self) -> float:
        return round(1 - self.latency_percent / 100, 10)


class BuildOptions(_Strict):
    slo: SloOptions = SloOptions()
    # Where alert annotations point for their dashboard link (the compose stack's Grafana by default).
    grafana_url: str = Field("http://localhost:3000", pattern=r"^https?://[^\s]+[^/]$")


DEFAULT = BuildOptions()


class OptionsError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def load_options(path: str | Path) -> BuildOptions:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise OptionsError([f"cannot read: {err}"]) from None
    try:
        return BuildOptions.model_validate(data)
    except ValidationError as err:
        raise OptionsError([f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                            for e in err.errors()]) from None


def with_slo(options: BuildOptions, availability_percent: float | None) -> BuildOptions:
    """`--slo` on the command line wins over the file."""
    if availability_percent is None:
        return options
    try:
        slo = SloOptions.model_validate({**options.slo.model_dump(), "availability_percent": availability_percent})
    except ValidationError as err:
        raise OptionsError([f"--slo: {e['msg']}" for e in err.errors()]) from None
    return options.model_copy(update={"slo": slo})
