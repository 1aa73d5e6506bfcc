"""Search spaces of Tune sweeps, from the command line or a sweep YAML: which config keys a sweep
varies and how.

    beta=0,0.5,1,2            a list: grid search tries every value; random search picks among them
    lam=loguniform:0.5:8      a range: uniform:LOW:HIGH, loguniform:LOW:HIGH (LOW > 0), or
                              randint:LOW:HIGH (integers LOW <= x < HIGH); random search only
    N=3,6,12                  aliases: beta = stage1.beta, lam or lambda = stage2.lam,
                              N = model.num_categories
    stage1.steps=800,1600     any other config key, dotted as in key=value overrides

In a sweep YAML the same specs sit under `space:` as a mapping, the right-hand sides either a
list (`beta: [0, 0.5, 1]`) or a range string (`lam: loguniform:0.5:8`).

Every value (for a range: both ends) is checked the way an override is, its type and then the
config's own validation with that value in place, before any trial starts: a bad spec is one
ConfigError line naming the key, never a trial that fails later.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from comgan.config import ConfigError, set_key

from .config import Config, validate

ALIASES = {"beta": "stage1.beta", "lam": "stage2.lam", "lambda": "stage2.lam", "N": "model.num_categories"}
RANGES = ("uniform", "loguniform", "randint")


@dataclass(frozen=True)
class Axis:
    """One varied key: a list of values, or a range `kind` from `low` to `high`."""
    key: str
    values: tuple = ()
    kind: str = ""
    low: float = 0.0
    high: float = 0.0

    def check_grid(self) -> None:
        """A grid tries listed values: a range has none (random search samples it)."""
        if not self.values:
            raise ConfigError(f"{self.key}: a {self.kind} range cannot be searched on a grid; give a list of "
                              "values or use random search")


def checked_value(base: Config, key: str, text: str):
    """`text` as the typed value of `key`, after the config accepts it (one-line ConfigError if not)."""
    cfg = copy.deepcopy(base)
    set_key(cfg, key, text)
    validate(cfg)
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def parse_axis(spec: str, base: Config) -> Axis:
    name, sep, rhs = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"search spec {spec!r}: expected KEY=VALUES, e.g. beta=0,0.5,1 or lam=loguniform:0.5:8")
    key = ALIASES.get(name, name)
    kind, _, bounds = rhs.partition(":")
    if kind in RANGES:
        return _range_axis(key, kind, bounds, base)
    texts = [t.strip() for t in rhs.split(",")]
    if not rhs.strip() or any(not t for t in texts):
        raise ConfigError(f"{key}: no values in {spec!r} (give a comma list or a range such as uniform:0:1)")
    values = tuple(checked_value(base, key, t) for t in texts)
    if len(set(values)) < len(values):
        raise ConfigError(f"{key}: a value is listed twice in {spec!r}")
    return Axis(key, values=values)


def _range_axis(key: str, kind: str, bounds: str, base: Config) -> Axis:
    parts = bounds.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"{key}: a range is {kind}:LOW:HIGH, got {kind}:{bounds}")
    low, high = (checked_value(base, key, p.strip()) for p in parts)
    if isinstance(low, bool) or not isinstance(low, (int, float)):
        raise ConfigError(f"{key} is not a number; give a list of values")
    if kind == "randint" and not isinstance(low, int):
        raise ConfigError(f"{key} takes floats; randint is for integer keys (use uniform)")
    if not low < high:
        raise ConfigError(f"{key}: the range {kind}:{low}:{high} is empty (LOW must be below HIGH)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{key}: loguniform needs LOW > 0, got {low}")
    return Axis(key, kind=kind, low=low, high=high)


def parse_space(specs: list[str], base: Config) -> list[Axis]:
    """The axes of `specs` (command-line words), each checked against `base`; one per key."""
    axes = [parse_axis(s, base) for s in specs]
    seen = set()
    for axis in axes:
        if axis.key in seen:
            raise ConfigError(f"{axis.key} is given twice in the search space")
        seen.add(axis.key)
    if not axes:
        raise ConfigError("the search space is empty: give at least one KEY=VALUES, e.g. beta=0,0.5,1")
    return axes


def specs_from_yaml(space: object) -> list[str]:
    """A sweep YAML's `space:` mapping as command-line specs."""
    if not isinstance(space, dict):
        raise ConfigError("space: must be a mapping of KEY: [values] or KEY: 'kind:LOW:HIGH'")
    specs = []
    for key, value in space.items():
        if isinstance(value, list):
            specs.append(f"{key}=" + ",".join("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                                             for v in value))
        else:
            specs.append(f"{key}={value}")
    return specs
