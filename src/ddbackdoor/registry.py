"""Registries of named parts (attacks, distillers, defenses): the built-in ones plus those that
installed packages declare under an entry-point group, so a third party extends the toolkit
without editing it.

A plugin package declares, in its pyproject.toml,

    [project.entry-points."ddbackdoor.attacks"]
    my_attack = "my_package.attack:MyAttack"

The group is read on first use, not at import, so importing ddbackdoor runs no plugin code
and a broken plugin fails only the commands that need a registry, in one line naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from .errors import ConfigError, unknown_name

T = TypeVar("T")

ENTRY_POINT_GROUPS = {
    "attack": "ddbackdoor.attacks",
    "distillation method": "ddbackdoor.distillers",
    "defense": "ddbackdoor.defenses",
}


def _package(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"package {dist.name}" if dist is not None else "an installed package"


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry: `builtins` first, then the group's entry points, each checked by `check`
    (which returns the entry or raises a ConfigError saying what the plugin got wrong)."""

    def __init__(self, kind: str, builtins: dict[str, T], check: Callable[[str, object], T]) -> None:
        self.kind = kind
        self.group = ENTRY_POINT_GROUPS[kind]
        self.builtins = dict(builtins)
        self.check = check
        self._entries: dict[str, T] | None = None
        self._origins: dict[str, str] = {name: "built in" for name in builtins}

    def _load(self) -> dict[str, T]:
        if self._entries is None:
            entries = dict(self.builtins)
            for entry in sorted(entry_points(group=self.group), key=lambda e: e.name):
                where = f"{self.kind} plugin {entry.name!r} ({entry.value}, from {_package(entry)})"
                if entry.name in entries:
                    raise ConfigError(f"{where} reuses the name of a built-in {self.kind}; rename it")
                try:
                    loaded = entry.load()
                except Exception as err:  # any failure of third-party code is that plugin's
                    raise ConfigError(
                        f"cannot load {where}: {type(err).__name__}: {err}; fix or uninstall the package"
                    ) from None
                try:
                    entries[entry.name] = self.check(entry.name, loaded)
                except ConfigError as err:
                    raise ConfigError(f"{where}: {err}") from None
                self._origins[entry.name] = _package(entry)
            self._entries = entries
        return self._entries

    def reload(self) -> None:
        """Read the entry points again (after installing a plugin in a running process)."""
        self._entries = None
        self._origins = {name: "built in" for name in self.builtins}

    def origin(self, name: str) -> str:
        """'built in', or the package that registered `name`."""
        self._load()
        return self._origins[name]

    def get_or_fail(self, name: str) -> T:
        """The entry, or the standard one-line error listing what is accepted."""
        entries = self._load()
        if name not in entries:
            raise unknown_name(self.kind, name, list(entries))
        return entries[name]

    def __getitem__(self, name: str) -> T:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()


def subclass_check(base: type) -> Callable[[str, object], type]:
    """A `check` for registries of classes: a subclass of `base` whose `name` is its key."""

    def check(name: str, entry: object) -> type:
        if not (isinstance(entry, type) and issubclass(entry, base)):
            raise ConfigError(f"the entry point must name a subclass of {base.__module__}.{base.__name__}")
        if getattr(entry, "name", None) != name:
            raise ConfigError(f"its class says name = {getattr(entry, 'name', None)!r}; set name = {name!r}")
        return entry

    return check


def description(entry: object) -> str:
    """An entry's one-line description: its `description` attribute, else its docstring's first line."""
    text = getattr(entry, "description", None) or (getattr(entry, "__doc__", None) or "").strip()
    text = text if isinstance(text, str) else ""
    return text.splitlines()[0].strip() if text else ""
