"""The resume contract of every job that writes a run folder (``experiment``, ``transfer``,
``train``, ``augment``): a finished piece made with the same settings is reused; a rerun with
other settings is never allowed to throw finished work away silently: it is refused with one
line naming each differing key (:func:`refuse_changed`: ``KEY: OLD there, NEW now``), never two
settings cut at a width, and says what to do. A change that nothing finished depends on goes
on (the experiment's ``run.json`` marker, :func:`differences`). The pieces record their
settings: a checkpoint's ``reuse_key`` (:func:`mladv.reuse.reusable`), a saved piece's
``settings`` (:func:`mladv.reuse.saved_with_key`), a shard folder's manifest
(:mod:`mladv.augment`).
"""
from __future__ import annotations

import json
import os
from typing import Any


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """The settings that differ between ``old`` (recorded by an earlier run) and ``new``, one
    ``"KEY: OLD there, NEW now"`` per differing leaf, nested keys dotted (``attack.eps``), in
    key order; ``[]`` when they are equal. Each value is cut at 60 characters, never the key;
    where a whole record differs in kind (one side is not a dict, e.g. none was recorded) the
    key is ``settings``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    return [] if old == new else [f"{path or 'settings'}: {_brief(old)} there, {_brief(new)} now"]


def _brief(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def refuse_changed(where: str | os.PathLike[str], diff: list[str], *, what: str,
                   hint: str = "use another output folder or delete this one") -> None:
    """The one refusal of a rerun with changed settings: ``ValueError`` ``"WHERE: holds WHAT
    made with other settings (KEY: OLD there, NEW now; ...); HINT"``, naming at most four
    differing keys (and how many more). Nothing when ``diff`` is empty."""
    if not diff:
        return
    more = f"; and {len(diff) - 4} more" if len(diff) > 4 else ""
    raise ValueError(f"{where}: holds {what} made with other settings ({'; '.join(diff[:4])}"
                     f"{more}); {hint}")
