"""Object ACL grants: read them (GetObjectAcl or the inventory's ObjectAccessControlList) and re-send
them as ``x-amz-grant-*`` headers on the write itself (never a later PutObjectAcl, so the new version never
exists with another ACL).

Reference: https://docs.aws.amazon.com/AmazonS3/latest/userguide/acl-overview.html#setting-acls
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

GRANT_PARAMS = {"FULL_CONTROL": "GrantFullControl", "READ": "GrantRead", "READ_ACP": "GrantReadACP",
                "WRITE_ACP": "GrantWriteACP"}


@dataclass(frozen=True)
class Acl:
    owner_id: str | None
    grants: tuple[tuple[str, str, str], ...] = field(default=())  # (permission, grantee kind, value)

    def grant_params(self) -> dict[str, str]:
        """``x-amz-grant-*`` parameters that recreate exactly these grants."""
        by_param: dict[str, list[str]] = {}
        for permission, kind, value in self.grants:
            param = GRANT_PARAMS.get(permission)
            if param is None:  # WRITE is not an object permission; nothing else exists
                continue
            by_param.setdefault(param, []).append(f'{kind}="{value}"')
        return {param: ", ".join(values) for param, values in sorted(by_param.items())}


def _grantee(grantee: Mapping[str, Any]) -> tuple[str, str]:
    kind = grantee.get("Type") or grantee.get("type")
    if kind == "Group":
        return "uri", grantee.get("URI") or grantee.get("uri")
    if kind == "AmazonCustomerByEmail":
        return "emailAddress", grantee.get("EmailAddress") or grantee.get("emailAddress")
    return "id", grantee.get("ID") or grantee.get("canonicalId") or grantee.get("id")


def acl_from_response(response: Mapping[str, Any]) -> Acl:
    """An :class:`Acl` from a GetObjectAcl response."""
    grants = tuple(
        (g["Permission"], *_grantee(g["Grantee"])) for g in response.get("Grants", []) if g.get("Grantee")
    )
    return Acl((response.get("Owner") or {}).get("ID"), grants)


def acl_from_inventory(value: str | None, owner_id: str | None) -> Acl | None:
    """An :class:`Acl` from the inventory's base64 JSON ``ObjectAccessControlList`` (None if unusable)."""
    if not value:
        return None
    try:
        doc = json.loads(base64.b64decode(value))
    except ValueError:
        return None
    if str(doc.get("status", "AVAILABLE")).upper() != "AVAILABLE":
        return None
    grants = []
    for g in doc.get("grants", []):
        kind, grantee = _grantee(g)
        grants.append((g.get("permission"), kind, grantee))
    return Acl(owner_id, tuple(grants))
