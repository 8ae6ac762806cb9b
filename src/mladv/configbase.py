"""The strict config base both studies share, and reading YAML with one-line errors.

Every problem with a config file is ONE ``ValueError`` line naming the file, the line (when the
key is in the file) and the key, e.g. ``configs/x.yaml:3: train.epochs: Input should be a valid
integer``. Command-line flags are merged into the YAML mapping before validation, so they are
checked the same way (a flag's key has no line).

A config may start from another: ``extends: base.yaml`` (a path relative to the config's folder)
reads the base first and lays the file's own settings over it, mapping by mapping (lists and
plain values replace the base's). A base may extend another; a cycle is one ``ValueError`` line.
A key a model lists in ``RENAMED`` fails with one line naming its new name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are refused and defaults are validated too. ``RENAMED`` maps an old
    top-level key to the name that replaced it (an old config fails naming the new key)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    RENAMED: ClassVar[dict[str, str]] = {}


def _loc_text(loc: tuple[int | str, ...]) -> str:
    """``("train", "epochs")`` -> ``train.epochs``; ``("attacks", 0, "name")`` ->
    ``attacks[0].name``."""
    text = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)
    return text.replace(".[", "[") or "(top level)"


def key_line(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` in ``text`` (the deepest one found), or None
    when not even the first key is in the text (it came from a flag)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is not None:
                line, child = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def error_line(exc: ValidationError, source: str, text: str | None = None,
               flags: frozenset[str] = frozenset()) -> str:
    """The first pydantic error as one line ``source[:line]: key.path: message`` (no line for
    a key set by a flag, one of ``flags``)."""
    errors = exc.errors()
    first = errors[0]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (not a setting of this section)"
    loc = tuple(first["loc"])
    from_flag = bool(loc) and loc[0] in flags
    line = key_line(text, loc) if text is not None and not from_flag else None
    where = f"{source}:{line}" if line is not None else source
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}: {_loc_text(loc)}: {msg}{more}"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``: mappings merge key by key (recursively), anything else in
    ``over`` (a list, a value) replaces the base's. Neither input is changed."""
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            value = merge(below, value)
        merged[key] = value
    return merged


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], str]:
    """The YAML mapping at ``path`` with its ``extends:`` base merged under it (module doc), and
    the file's own text; ``ValueError`` naming the file (and the line) otherwise."""
    here = Path(path)
    raw, text = _read_mapping(here)
    base = raw.pop("extends", None)
    if base is None:
        return raw, text
    chain = (*_chain, here.resolve())
    below, _ = read_yaml(_base_path(here, base, chain), chain)
    return merge(below, raw), text


def _base_path(here: Path, base: object, chain: tuple[Path, ...]) -> Path:
    """The file ``extends: base`` in ``here`` names (relative to ``here``'s folder); one
    ``ValueError`` line for a non-string, a missing file or a cycle through ``chain``."""
    if not isinstance(base, str):
        raise ValueError(f"{here}: extends: expected a YAML file name, got {base!r}")
    path = here.parent / base
    if path.resolve() in chain:
        loop = " -> ".join(p.name for p in (*chain, path))
        raise ValueError(f"{here}: extends: {base} makes a cycle ({loop})")
    if not path.is_file():
        raise ValueError(f"{here}: extends: {path} does not exist")
    return path


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (:class:`UniqueKeyLoader`)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: YAML 1.2 requires
    unique keys, but PyYAML keeps the last one silently (a setting edited twice, the first
    edit lost). Merge keys (``<<``) are resolved by ``flatten_mapping`` first, so they may still
    override."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise DuplicateKeyError(None, None, f"{key!r} given twice in one mapping (first "
                                        f"on line {first}; YAML would keep only the last)",
                                        key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_mapping(path: Path) -> tuple[dict[str, Any], str]:
    """The YAML mapping at ``path`` (:class:`UniqueKeyLoader`: ``yaml.safe_load`` refusing a
    duplicate key) and its text, nothing merged."""
    if not path.is_file():
        raise ValueError(f"config {path} does not exist")
    text = path.read_text()
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise ValueError(f"{path}:{line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ValueError(f"{path}:{where} not valid YAML ({problem})") from None
    if raw is None:
        return {}, text
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level, "
                         f"got {type(raw).__name__}")
    return raw, text


def check_renamed(model: type[BaseModel], raw: dict[str, Any], source: str = "config",
                  text: str | None = None) -> None:
    """One ``ValueError`` line ``source[:line]: 'old' is now 'new'`` for the first top-level key
    of ``raw`` that ``model.RENAMED`` lists (an old config, caught before anything runs)."""
    renamed: dict[str, str] = getattr(model, "RENAMED", {})
    old = next((key for key in raw if key in renamed), None)
    if old is not None:
        line = key_line(text, (old,)) if text is not None else None
        where = f"{source}:{line}" if line is not None else source
        raise ValueError(f"{where}: {old!r} is now {renamed[old]!r}")


def validate(model: type[M], raw: dict[str, Any], source: str = "config",
             text: str | None = None, flags: frozenset[str] = frozenset()) -> M:
    """``model`` validated from ``raw``; ``ValueError`` with one line naming the key otherwise
    (and its line in ``text``, the YAML it was read from, unless a flag in ``flags`` set it)."""
    check_renamed(model, raw, source, text)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(error_line(exc, source, text, flags)) from None


def load_yaml_config(model: type[M], path: str | Path,
                     overrides: dict[str, Any] | None = None) -> M:
    """Read ``path``, apply ``overrides`` (flags; ``None`` values are ignored), validate."""
    raw, text = read_yaml(path)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    raw.update(flags)
    return validate(model, raw, str(path), text, frozenset(flags))


def dump_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
