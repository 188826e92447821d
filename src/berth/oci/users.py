"""Resolving a ``USER`` string against a rootfs's ``/etc/passwd`` and ``/etc/group``.

The rules are containerd's (which follow Docker's):

* ``"1000"`` is a uid; its passwd entry, if any, gives the gid, else gid 0.
* ``"name"`` must exist in passwd; uid and gid come from its entry.
* ``"a:b"``: each side is a number or a name; names are looked up (user in
  passwd, group in group), numbers are taken as they are. Two numbers need
  no rootfs at all.
* Anything else (``a:b:c``) is invalid.

A number is a decimal in ``0 .. 2**31-1``; anything else is treated as a name.

Errors: containerd reports a missing name as a plain "no users found" error
(gRPC Unknown). Berth says which name was missing and raises NotFound, the
code a client can act on; a malformed string is InvalidArgument.

Files are read with :func:`berth.oci.rootfs.read_file_in_root`, so a hostile
image cannot point these lookups at the host's files. Lines whose ids are
not numbers are skipped, where runc's parser would read them as 0 (root).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth import errdefs
from berth.oci.rootfs import read_file_in_root

__all__ = [
    "GroupEntry",
    "PasswdEntry",
    "ResolvedUser",
    "append_groups",
    "read_group",
    "read_passwd",
    "resolve_user",
    "supplementary_gids",
]

MAX_ID = 2**31 - 1
_NUMBER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str = ""
    shell: str = ""


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedUser:
    """The outcome of a lookup; ``name`` is set when passwd named the user."""

    uid: int
    gid: int
    name: str | None = None


def _as_id(text: str) -> int | None:
    """The id ``text`` spells, or None when it is to be read as a name."""
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    return value if 0 <= value <= MAX_ID else None


def _lines(data: bytes) -> list[list[str]]:
    out = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def read_passwd(root: str) -> list[PasswdEntry] | None:
    """The rootfs's passwd entries, or None when it has no ``/etc/passwd``."""
    data = read_file_in_root(root, "/etc/passwd")
    if data is None:
        return None
    entries = []
    for fields in _lines(data):
        fields += [""] * (7 - len(fields))
        uid, gid = _as_id(fields[2]), _as_id(fields[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(fields[0], uid, gid, fields[5], fields[6]))
    return entries


def read_group(root: str) -> list[GroupEntry] | None:
    """The rootfs's group entries, or None when it has no ``/etc/group``."""
    data = read_file_in_root(root, "/etc/group")
    if data is None:
        return None
    entries = []
    for fields in _lines(data):
        fields += [""] * (4 - len(fields))
        gid = _as_id(fields[2])
        if gid is None:
            continue
        members = tuple(m for m in fields[3].split(",") if m)
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _user_by_name(root: str, name: str) -> PasswdEntry:
    users = read_passwd(root)
    if users is None:
        raise errdefs.NotFound(f"no users found: the rootfs has no /etc/passwd to look up {name!r}")
    for user in users:
        if user.name == name:
            return user
    raise errdefs.NotFound(f"no users found: {name!r} is not in the rootfs's /etc/passwd")


def _group_by_name(root: str, name: str) -> GroupEntry:
    groups = read_group(root)
    if groups is None:
        raise errdefs.NotFound(f"no groups found: the rootfs has no /etc/group to look up {name!r}")
    for group in groups:
        if group.name == name:
            return group
    raise errdefs.NotFound(f"no groups found: {name!r} is not in the rootfs's /etc/group")


def _user_by_uid(root: str, uid: int) -> PasswdEntry | None:
    for user in read_passwd(root) or ():
        if user.uid == uid:
            return user
    return None


def resolve_user(root: str | None, spec: str) -> ResolvedUser:
    """Resolve ``spec`` (``user``, ``uid``, ``user:group``, ``uid:gid``, ...).

    ``root`` is the rootfs directory; it may be None only for ``uid:gid``.
    Raises InvalidArgument for a malformed string (or when a lookup is needed
    and there is no rootfs) and NotFound for an unknown user or group name.
    """
    parts = spec.split(":")
    if len(parts) > 2:
        raise errdefs.InvalidArgument(
            f"invalid USER value {spec!r}: want user, uid, user:group or uid:gid"
        )
    uid = _as_id(parts[0])
    gid = _as_id(parts[1]) if len(parts) == 2 else None
    if len(parts) == 2 and uid is not None and gid is not None:
        return ResolvedUser(uid, gid)
    if root is None:
        raise errdefs.InvalidArgument(f"rootfs absolute path is required to resolve user {spec!r}")

    if len(parts) == 1:
        if uid is None:
            user = _user_by_name(root, parts[0])
            return ResolvedUser(user.uid, user.gid, user.name)
        found = _user_by_uid(root, uid)
        if found is None:
            return ResolvedUser(uid, 0)
        return ResolvedUser(found.uid, found.gid, found.name)

    name: str | None = None
    if uid is None:
        user = _user_by_name(root, parts[0])
        uid, name = user.uid, user.name
    if gid is None:
        gid = _group_by_name(root, parts[1]).gid
    return ResolvedUser(uid, gid, name)


def supplementary_gids(root: str, user: str | int) -> list[int]:
    """Groups that list ``user`` (a name, or a uid looked up in passwd) as a member.

    A group named like the user is skipped (it is the primary group, when
    the user has one). Missing passwd or group files, or a uid with no
    passwd entry, give no groups.
    """
    if isinstance(user, int):
        found = _user_by_uid(root, user)
        if found is None:
            return []
        name = found.name
    else:
        name = user
    return [g.gid for g in read_group(root) or () if g.name != name and name in g.members]


def append_groups(root: str, groups: list[str]) -> list[int]:
    """Gids for ``groups``: numbers as given, names from ``/etc/group``.

    Raises NotFound for a name the rootfs does not define.
    """
    table: dict[str, int] | None = None
    out = []
    for group in groups:
        gid = _as_id(group)
        if gid is None:
            if table is None:
                table = {g.name: g.gid for g in read_group(root) or ()}
            if group not in table:
                raise errdefs.NotFound(f"unable to find group {group!r} in the rootfs's /etc/group")
            gid = table[group]
        out.append(gid)
    return out
