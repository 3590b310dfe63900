"""Settings declared once, on a dataclass field, with their type, range and help: the dataclass checks itself
(`check_settings` in `__post_init__`), and command-line flags, recipe keys and `method:key=value` options are
derived from the same declaration, so a bad value gets the same message wherever it enters."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list of integers >= 0",
}


@dataclass(frozen=True)
class Setting:
    """What values a setting takes: `kind`, bounds (`low` / `high` inclusive, `above` exclusive) or `choices`."""

    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] | None = None
    parse_text: Callable[[str], Any] | None = None  # a custom parser of command-line text
    optional: bool = False  # None is allowed

    def describe(self) -> str:
        """The allowed values in words, e.g. "an integer >= 1" or "a number in (0, 1]"."""
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        words = _KIND_NAMES[self.kind]
        if self.above is not None and self.high is not None:
            return f"{words} in ({self.above:g}, {self.high:g}]"
        if self.low is not None and self.high is not None:
            return f"{words} in [{self.low:g}, {self.high:g}]"
        if self.above is not None:
            return f"{words} > {self.above:g}"
        if self.low is not None:
            return f"{words} >= {self.low:g}"
        return words

    def check(self, name: str, value: Any) -> Any:
        """`value` (ints widened to float for float settings), or a ValueError naming the setting and its range."""
        if value is None and self.optional:
            return None
        ok = _is_kind(value, self.kind)
        if ok and self.kind is list:
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.kind in (int, float):
            ok = (
                (self.low is None or value >= self.low)
                and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above)
            )
        if not ok:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return float(value) if self.kind is float else value

    def parse(self, name: str, text: str) -> Any:
        """Command-line text as a checked value."""
        if self.parse_text is not None:
            return self.check(name, self.parse_text(text))
        if self.kind in (int, float):
            try:
                return self.check(name, self.kind(text))
            except ValueError:
                raise ValueError(f"{name} must be {self.describe()}, got {text!r}") from None
        return self.check(name, text)


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def setting(default: Any = dataclasses.MISSING, kind: type = int, help: str = "", **spec: Any) -> Any:
    """A dataclass field with a `Setting`: `rank: int = setting(32, int, "selector rank", low=1)`."""
    meta = {"setting": Setting(kind, help, **spec)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def same_as(spec: Setting, default: Any, help: str | None = None) -> Any:
    """A dataclass field with an existing `Setting` (same type and range), so a concept such as a keep ratio is
    declared once: `default_keep: float = same_as(KEEP, 1 / 9, "the pack's default keep ratio")`."""
    return dataclasses.field(default=default, metadata={"setting": dataclasses.replace(spec, help=help or spec.help)})


def settings_of(cls_or_obj: Any) -> dict[str, Setting]:
    """The declared settings of a dataclass (fields without a `Setting` are not settings)."""
    fields = dataclasses.fields(cls_or_obj) if dataclasses.is_dataclass(cls_or_obj) else ()
    return {f.name: f.metadata["setting"] for f in fields if "setting" in f.metadata}


def defaults_of(cls: type) -> dict[str, Any]:
    """Each setting's default value."""
    out = {}
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def check_settings(obj: Any, owner: str | None = None) -> None:
    """Check every setting of a dataclass instance (call from `__post_init__`); normalises ints given for floats."""
    owner = owner or type(obj).__name__
    for name, spec in settings_of(obj).items():
        try:
            object.__setattr__(obj, name, spec.check(name, getattr(obj, name)))
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--flag` per setting of `cls`, typed and checked by its `Setting`, defaulting to the dataclass default."""
    defaults = defaults_of(cls)
    for name, spec in settings_of(cls).items():
        if name in skip:
            continue

        def parse(text: str, name: str = name, spec: Setting = spec) -> Any:
            try:
                return spec.parse("--" + name.replace("_", "-"), text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        default = defaults[name]
        values = "" if spec.kind is str and not spec.choices else spec.describe() + "; "
        shown = ("all" if spec.kind is list else "unset") if default is None else default
        shown = f"{shown:.4g}" if isinstance(shown, float) else shown
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=parse,
            default=default,
            metavar=name.upper() if spec.choices is None else "{" + ",".join(spec.choices) + "}",
            help=f"{spec.help} ({values}default: {shown})",
        )
