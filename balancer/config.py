"""Typed, frozen configuration of the balancer layer: pools of instances and how to pick among them.

Primitives: `InstanceConfig`, `PoolConfig`, `Algorithm`. Validation of names across sections (routes that name a
pool, duplicate ids) lives in `edge.config.semantic_errors`, which sees the whole file.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class Strict(BaseModel):
    """Base of every config model: immutable, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Algorithm(StrEnum):
    ROUND_ROBIN = "round_robin"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"


class InstanceConfig(Strict):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=10_000)
    id: str | None = Field(default=None, pattern=NAME_PATTERN)
    zone: str | None = Field(default=None, pattern=NAME_PATTERN)

    @field_validator("host")
    @classmethod
    def _host_has_no_scheme_or_port(cls, v: str) -> str:
        if "/" in v or " " in v or (v.count(":") == 1):
            raise ValueError("must be a bare host name or IP address (put the port in 'port', no scheme)")
        return v

    @property
    def instance_id(self) -> str:
        """The instance's name in telemetry: the configured id, else `host:port`."""
        return self.id or f"{self.host}:{self.port}"


class PoolConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    algorithm: Algorithm = Algorithm.ROUND_ROBIN
    instances: tuple[InstanceConfig, ...] = Field(min_length=1)
    max_connections_per_instance: int = Field(default=256, ge=1, le=100_000)
    keepalive_idle_s: float = Field(default=15.0, gt=0, le=3600)
