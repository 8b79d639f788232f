"""Rate-limit profiles: the queries per second of each API class, from ``conf/rate_limits/``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow_spark_tools.config.files import conf_dir, read_yaml
from mlflow_spark_tools.core.endpoints import API_CLASSES
from mlflow_spark_tools.errors import InvalidConfigError


@dataclass(frozen=True)
class RateLimitProfile:
    """Queries per second per API class, and the share of them a client of ours may use."""

    name: str
    limits: Mapping[str, float]
    safety_factor: float = 0.9

    def __post_init__(self) -> None:
        unknown = set(self.limits) - set(API_CLASSES)
        if unknown:
            raise InvalidConfigError(
                f"Rate-limit profile {self.name!r} has unknown API classes {sorted(unknown)}; "
                f"known: {', '.join(API_CLASSES)}."
            )
        missing = set(API_CLASSES) - set(self.limits)
        if missing:
            raise InvalidConfigError(
                f"Rate-limit profile {self.name!r} lacks limits for {sorted(missing)}."
            )
        for api_class, qps in self.limits.items():
            if isinstance(qps, bool) or not isinstance(qps, (int, float)) or qps <= 0:
                raise InvalidConfigError(
                    f"Rate-limit profile {self.name!r}: limits.{api_class} must be a positive "
                    f"number, got {qps!r}."
                )
        if not isinstance(self.safety_factor, (int, float)) or not 0 < self.safety_factor <= 1:
            raise InvalidConfigError(
                f"Rate-limit profile {self.name!r}: safety_factor must be in (0, 1], "
                f"got {self.safety_factor!r}."
            )

    def qps(self, api_class: str) -> float:
        """The rate a client of ours may use for one API class."""
        return float(self.limits[api_class]) * float(self.safety_factor)

    @classmethod
    def load(cls, name_or_path: str) -> RateLimitProfile:
        """Load a profile by name from ``conf/rate_limits/`` or from a YAML file path."""
        candidate = Path(name_or_path).expanduser()
        if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
            path, name = candidate, candidate.stem
        else:
            path, name = conf_dir() / "rate_limits" / f"{name_or_path}.yaml", name_or_path
            if not path.is_file():
                known = sorted(p.stem for p in (conf_dir() / "rate_limits").glob("*.yaml"))
                raise InvalidConfigError(
                    f"Unknown rate-limit profile {name_or_path!r}: use one of {known} or the path "
                    "of a YAML file with 'limits' and 'safety_factor'."
                )
        data = read_yaml(path)
        if not isinstance(data.get("limits"), dict):
            raise InvalidConfigError(f"Rate-limit profile {path} needs a 'limits' mapping.")
        extra = set(data) - {"limits", "safety_factor"}
        if extra:
            raise InvalidConfigError(f"Rate-limit profile {path} has unknown keys {sorted(extra)}.")
        return cls(name=name, limits=dict(data["limits"]), safety_factor=data.get("safety_factor", 0.9))
