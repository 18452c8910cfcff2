"""IAM in the moto server as AWS applies it to the calls the jobs make (strict mode; runs inside moto's process).

:func:`install` patches moto's one authorization funnel (``_authenticate_and_authorize_action``)
and S3's key handler. Access control applies to **principals**: requests signed with the access key of an IAM
user or of an assumed role (``s3lake_testbed.iam`` creates them). Requests signed with any other key -- the test
bed's dummy ``testing`` credentials that set-up uses -- keep moto's behaviour (no IAM unless switched on with
``/moto-api/reset-auth``), so a test switches IAM on for exactly the principal it creates, after set-up.

For a principal this module, not moto, decides (moto's check is partial; every difference is a job-visible bug):

* **The IAM actions of each S3 request**, after the Service Authorization Reference's operation table
  (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html and
  https://docs.amazonaws.cn/service-authorization/latest/reference/list_s3.html): moto authorizes
  GetBucketOwnershipControls, GetObjectLockConfiguration and GetBucketEncryption as ``s3:ListBucket``,
  HeadBucket as the non-existent ``s3:HeadBucket``, a versioned HEAD as ``s3:GetObject``, ``?acl`` /
  ``?tagging`` with ``versionId`` as ``s3:GetObjectVersion``, GetObjectRetention / GetObjectLegalHold as
  ``s3:GetObject``, and checks neither the copy source of CopyObject / UploadPartCopy (``s3:GetObject`` or
  ``s3:GetObjectVersion`` on it) nor the header-dependent actions of a write: ``x-amz-tagging`` (and the
  source's tags copied by CopyObject) need ``s3:PutObjectTagging``, ``x-amz-acl`` / ``x-amz-grant-*``
  ``s3:PutObjectAcl``, the lock headers ``s3:PutObjectRetention`` / ``s3:PutObjectLegalHold``
  (CopyObject's row lists all of them; tags copied from the source also need ``s3:GetObjectTagging`` on it:
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/tagging-and-policies.html).
* **SSE-KMS through S3**: reading an SSE-KMS object needs ``kms:Decrypt`` on its key, writing one
  ``kms:GenerateDataKey`` (CreateMultipartUpload too), each UploadPart / UploadPartCopy ``kms:Decrypt`` on the
  upload's key (API_CreateMultipartUpload.html, Permissions), each with ``kms:ViaService = s3.<region>.amazonaws.com``
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html#aws-managed-customer-managed-keys).
  moto checks no KMS permission at all.
* **Resources**: moto authorizes Glue, SSM and KMS calls against ``*``, so a statement naming the table,
  parameter or key never matches. Here Glue needs the action on the catalog, the database and the table
  (https://docs.aws.amazon.com/glue/latest/dg/glue-specifying-resource-arns.html), SSM on the parameter ARN,
  and a SecureString read ``WithDecryption`` also ``kms:Decrypt`` on its key via SSM
  (https://docs.aws.amazon.com/systems-manager/latest/userguide/ps-restrict-decryption.html).
* **Conditions**: moto evaluates a condition only for role trust, and turns an Allow statement whose condition
  does not hold into an explicit Deny. Here conditions are evaluated on the request's context keys
  (``s3:prefix``, ``kms:ViaService``, ...): a missing key fails a positive operator, passes ``...IfExists`` and the
  negated ones (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).
* **HEAD/GET of a missing key** answer 403 AccessDenied, not 404, to a principal without ``s3:ListBucket`` on
  the bucket (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html, "Permissions"). The request
  has no ``s3:prefix``, so a ListBucket statement conditioned on it does not count.
* **Object Lock headers** on HEAD/GET only to a principal with ``s3:GetObjectRetention`` (mode, retain-until date)
  / ``s3:GetObjectLegalHold`` (legal hold) (API_HeadObject.html: "This header is only returned if the requester
  has the s3:GetObjectRetention permission").
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger(__name__)

AUDIT_TAG = "s3lake:iam-audit"  # role tag: a file that gets one JSON line per authorization decision

LOCK_RETENTION_HEADERS = ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date")
LOCK_LEGAL_HOLD_HEADERS = ("x-amz-object-lock-legal-hold",)
ACL_HEADERS = ("x-amz-acl", "x-amz-grant-read", "x-amz-grant-write", "x-amz-grant-read-acp",
               "x-amz-grant-write-acp", "x-amz-grant-full-control")

# Bucket sub-resource -> IAM action for GET (first match wins; none: ListBucket, the object listing).
BUCKET_GET_ACTIONS = (
    ("uploads", "ListBucketMultipartUploads"), ("versions", "ListBucketVersions"),
    ("ownershipControls", "GetBucketOwnershipControls"), ("acl", "GetBucketAcl"),
    ("versioning", "GetBucketVersioning"), ("location", "GetBucketLocation"),
    ("object-lock", "GetBucketObjectLockConfiguration"), ("encryption", "GetEncryptionConfiguration"),
    ("policyStatus", "GetBucketPolicyStatus"), ("policy", "GetBucketPolicy"),
    ("lifecycle", "GetLifecycleConfiguration"), ("tagging", "GetBucketTagging"),
    ("replication", "GetReplicationConfiguration"), ("notification", "GetBucketNotification"),
    ("logging", "GetBucketLogging"), ("cors", "GetBucketCORS"), ("website", "GetBucketWebsite"),
    ("accelerate", "GetAccelerateConfiguration"), ("requestPayment", "GetBucketRequestPayment"),
    ("publicAccessBlock", "GetBucketPublicAccessBlock"), ("inventory", "GetInventoryConfiguration"),
    ("intelligent-tiering", "GetIntelligentTieringConfiguration"), ("metrics", "GetMetricsConfiguration"),
    ("analytics", "GetAnalyticsConfiguration"),
)
# Object sub-resource -> (action, action with versionId) for GET and PUT.
KEY_GET_ACTIONS = (
    ("uploadId", "ListMultipartUploadParts", "ListMultipartUploadParts"),
    ("acl", "GetObjectAcl", "GetObjectVersionAcl"),
    ("tagging", "GetObjectTagging", "GetObjectVersionTagging"),
    ("retention", "GetObjectRetention", "GetObjectRetention"),
    ("legal-hold", "GetObjectLegalHold", "GetObjectLegalHold"),
    ("attributes", "GetObjectAttributes", "GetObjectVersionAttributes"),
)
KEY_PUT_ACTIONS = (
    ("acl", "PutObjectAcl", "PutObjectVersionAcl"),
    ("tagging", "PutObjectTagging", "PutObjectVersionTagging"),
    ("retention", "PutObjectRetention", "PutObjectRetention"),
    ("legal-hold", "PutObjectLegalHold", "PutObjectLegalHold"),
)
GLUE_TABLE_PARAM = {  # action -> (database param path, table param path)
    "GetTable": ("DatabaseName", "Name"), "DeleteTable": ("DatabaseName", "Name"),
    "CreateTable": ("DatabaseName", "TableInput.Name"), "UpdateTable": ("DatabaseName", "TableInput.Name"),
}
GLUE_DATABASE_PARAM = {"GetDatabase": "Name", "DeleteDatabase": "Name", "CreateDatabase": "DatabaseInput.Name",
                       "UpdateDatabase": "Name", "GetTables": "DatabaseName"}

# ------------------------------------------------------------------------------ policy evaluation


def _glob(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key_values: dict[str, Any], context: dict[str, str]) -> bool:
    if_exists = operator.endswith("IfExists")
    op = operator[: -len("IfExists")] if if_exists else operator
    for qualifier in ("ForAnyValue:", "ForAllValues:"):
        op = op[len(qualifier):] if op.startswith(qualifier) else op
    for key, expected in key_values.items():
        present = {k.lower(): v for k, v in context.items()}
        actual = present.get(key.lower())
        wanted = [str(v) for v in _as_list(expected)]
        if op == "Null":
            if (actual is None) != (wanted[0].lower() == "true"):
                return False
            continue
        negated = "Not" in op
        if actual is None:
            if if_exists or negated:
                continue
            return False
        if op in ("StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals"):
            hit = actual in wanted
        elif op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
            hit = actual.lower() in [w.lower() for w in wanted]
        elif op in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike"):
            hit = any(_glob(w, actual) for w in wanted)
        elif op == "Bool":
            hit = actual.lower() in [w.lower() for w in wanted]
        else:
            log.warning("condition operator %s not emulated: the statement does not apply", operator)
            return False
        if hit == negated:
            return False
    return True


def statement_applies(statement: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    """Does ``statement`` cover ``action`` on ``resource`` with ``context`` (its Effect aside)?"""
    if "Action" in statement:
        if not any(_glob(a, action, ignore_case=True) for a in _as_list(statement["Action"])):
            return False
    elif any(_glob(a, action, ignore_case=True) for a in _as_list(statement.get("NotAction", []))):
        return False
    if "Resource" in statement:
        if not any(_glob(r, resource) for r in _as_list(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(_glob(r, resource) for r in _as_list(statement["NotResource"])):
            return False
    return all(_condition_holds(op, kv, context) for op, kv in statement.get("Condition", {}).items())


def evaluate(documents: Iterable[dict], action: str, resource: str,
             context: dict[str, str] | None = None) -> tuple[bool, list[str]]:
    """IAM's identity-policy evaluation: an applicable Deny wins, else an applicable Allow, else implicit deny.

    Also returns the Sids of the applicable Allow statements (for the audit).
    """
    sids: list[str] = []
    for doc in documents:
        for statement in _as_list(doc.get("Statement", [])):
            if statement_applies(statement, action, resource, context or {}):
                if statement.get("Effect") == "Deny":
                    return False, []
                sids.append(statement.get("Sid", ""))
    return bool(sids), sids


def is_allowed(documents: Iterable[dict], action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    return evaluate(documents, action, resource, context)[0]


# ------------------------------------------------------------------------------ who is asking


def _access_key_id(headers: Any) -> str:
    auth = headers.get("Authorization") or ""
    return auth.partition("Credential=")[2].partition("/")[0]


def is_principal_key(account_id: str, access_key_id: str) -> bool:
    """Is ``access_key_id`` an IAM user's key or an assumed role's (anything else is the set-up admin)?"""
    if not access_key_id:
        return False
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    for partition in ("aws",):
        iam = iam_backends[account_id][partition]
        if any(k.access_key_id == access_key_id for u in iam.users.values() for k in u.access_keys):
            return True
        if any(r.access_key_id == access_key_id for r in sts_backends[account_id][partition].assumed_roles):
            return True
    return False


def policy_documents(access_key: Any) -> list[dict]:
    """The identity policies (inline and attached, with groups) of moto's access-key object."""
    from moto.iam.access_control import IAMPolicy

    return [IAMPolicy(p)._policy_json for p in access_key.collect_policies()]


class Principal:
    """The identity policies of the principal that signed a request, and where its decisions are audited."""

    def __init__(self, arn: str, documents: list[dict], audit_path: str | None) -> None:
        self.arn, self.documents, self.audit_path = arn, documents, audit_path

    def allows(self, action: str, resource: str, context: dict[str, str] | None = None, *,
               kind: str = "request") -> bool:
        """``kind``: "request" (denied = 403) or "visibility" (denied = a 403 for a missing key, headers hidden)."""
        allowed, sids = evaluate(self.documents, action, resource, context)
        if self.audit_path:
            line = {"action": action, "resource": resource, "allowed": allowed, "sids": sids, "kind": kind}
            with open(self.audit_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        return allowed


def _principal(response: Any) -> Principal | None:
    """The principal that signed this request, or None for the set-up admin."""
    from moto.iam.access_control import AssumedRoleAccessKey, CreateAccessKeyFailure, create_access_key
    from moto.iam.models import iam_backends

    akid = _access_key_id(response.headers)
    account = response.current_account
    if not is_principal_key(account, akid):
        return None
    try:
        key = create_access_key(account_id=account, partition="aws", access_key_id=akid, headers=response.headers)
    except CreateAccessKeyFailure:
        return None
    audit = None
    if isinstance(key, AssumedRoleAccessKey):
        role = iam_backends[account]["aws"].get_role(key._owner_role_name)
        tags = role.tags.values() if isinstance(role.tags, dict) else role.tags or []
        audit = {t["Key"]: t["Value"] for t in tags}.get(AUDIT_TAG)
    return Principal(key.arn, policy_documents(key), audit)


# ------------------------------------------------------------------------------ what a request needs


def _query(response: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(response.uri).query, keep_blank_values=True)


def _s3_object(account: str, bucket: str, key: str, version_id: str | None) -> Any:
    from moto.s3.models import s3_backends

    try:
        return s3_backends[account]["aws"].get_object(bucket, key, version_id=version_id)
    except Exception:  # a missing source: S3 answers with its own error after authorization
        return None


def _has_tags(account: str, obj: Any) -> bool:
    from moto.s3.models import s3_backends

    return bool(s3_backends[account]["aws"].get_object_tagging(obj).get("Tags"))


def _kms_arn(key_id: str, region: str, account: str) -> str:
    return key_id if key_id.startswith("arn:") else f"arn:aws:kms:{region}:{account}:key/{key_id}"


def _s3_write_kms_key(response: Any, bucket: str, account: str) -> str | None:
    """The KMS key a PutObject/CopyObject/CreateMultipartUpload encrypts with (header or bucket default)."""
    headers = response.headers
    sse = headers.get("x-amz-server-side-encryption")
    key_id = headers.get("x-amz-server-side-encryption-aws-kms-key-id")
    if sse is None:
        from moto.s3.models import s3_backends

        try:
            rules = (s3_backends[account]["aws"].get_bucket(bucket).encryption or {}).get("Rule", {})
        except Exception:
            rules = {}
        default = _as_list(rules)[0].get("ApplyServerSideEncryptionByDefault", {}) if rules else {}
        sse, key_id = default.get("SSEAlgorithm"), default.get("KMSMasterKeyID")
    if sse in ("aws:kms", "aws:kms:dsse"):
        return key_id or "alias/aws/s3"
    return None


def s3_requirements(response: Any, bucket: str | None, key: str | None) -> list[tuple[str, str, dict]]:
    """Every (action, resource, context) an S3 request needs from a principal."""
    method = response.method.upper()
    query = _query(response)
    headers = response.headers
    region, account = response.region, response.current_account
    version = query.get("versionId", [None])[0]
    via_s3 = {"kms:ViaService": f"s3.{region}.amazonaws.com"}
    if bucket is None:
        return [("s3:ListAllMyBuckets", "*", {})]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if key is None:
        if method == "HEAD":
            return [("s3:ListBucket", bucket_arn, {})]
        if method == "GET":
            action = next((a for sub, a in BUCKET_GET_ACTIONS if sub in query), "ListBucket")
            context = {}
            if action in ("ListBucket", "ListBucketVersions") and "prefix" in query:
                context["s3:prefix"] = query["prefix"][0]
            return [(f"s3:{action}", bucket_arn, context)]
        return [(f"s3:{response.data.get('Action', method)}", bucket_arn, {})]

    arn = f"{bucket_arn}/{key}"
    needs: list[tuple[str, str, dict]] = []
    if method in ("GET", "HEAD"):
        found = next(((a, av) for sub, a, av in KEY_GET_ACTIONS if sub in query), None) if method == "GET" else None
        if found:
            return [(f"s3:{found[1] if version else found[0]}", arn, {})]
        needs.append(("s3:GetObjectVersion" if version else "s3:GetObject", arn, {}))
        if method == "GET":
            obj = _s3_object(account, bucket, key, version)
            if obj is not None and obj.encryption in ("aws:kms", "aws:kms:dsse") and obj.kms_key_id:
                needs.append(("kms:Decrypt", _kms_arn(obj.kms_key_id, region, account), via_s3))
        return needs
    if method == "DELETE":
        if "uploadId" in query:
            return [("s3:AbortMultipartUpload", arn, {})]
        return [("s3:DeleteObjectVersion" if version else "s3:DeleteObject", arn, {})]
    if method == "PUT":
        found = next(((a, av) for sub, a, av in KEY_PUT_ACTIONS if sub in query), None)
        if found:
            return [(f"s3:{found[1] if version else found[0]}", arn, {})]
    # PutObject, CopyObject, UploadPart(Copy), CreateMultipartUpload, CompleteMultipartUpload
    needs.append(("s3:PutObject", arn, {}))
    source = headers.get("x-amz-copy-source")
    part = "partNumber" in query
    creating = method == "PUT" and not part or method == "POST" and "uploads" in query
    if source:
        src_path, _, src_query = unquote(source).lstrip("/").partition("?")
        src_bucket, _, src_key = src_path.partition("/")
        src_version = parse_qs(src_query).get("versionId", [None])[0]
        src_arn = f"arn:aws:s3:::{src_bucket}/{src_key}"
        needs.append(("s3:GetObjectVersion" if src_version else "s3:GetObject", src_arn, {}))
        obj = _s3_object(account, src_bucket, src_key, src_version)
        if obj is not None and obj.encryption in ("aws:kms", "aws:kms:dsse") and obj.kms_key_id:
            needs.append(("kms:Decrypt", _kms_arn(obj.kms_key_id, region, account), via_s3))
        copies_tags = not part and headers.get("x-amz-tagging-directive", "COPY").upper() == "COPY"
        if copies_tags and obj is not None and _has_tags(account, obj):
            tag_action = "s3:GetObjectVersionTagging" if src_version else "s3:GetObjectTagging"
            needs += [(tag_action, src_arn, {}), ("s3:PutObjectTagging", arn, {})]
    if creating:
        if headers.get("x-amz-tagging"):
            needs.append(("s3:PutObjectTagging", arn, {}))
        if any(headers.get(h) for h in ACL_HEADERS):
            needs.append(("s3:PutObjectAcl", arn, {}))
        if headers.get("x-amz-object-lock-mode") or headers.get("x-amz-object-lock-retain-until-date"):
            needs.append(("s3:PutObjectRetention", arn, {}))
        if headers.get("x-amz-object-lock-legal-hold"):
            needs.append(("s3:PutObjectLegalHold", arn, {}))
        kms_key = _s3_write_kms_key(response, bucket, account)
        if kms_key and not kms_key.startswith("alias/aws/"):
            needs.append(("kms:GenerateDataKey", _kms_arn(kms_key, region, account), via_s3))
    if part and "uploadId" in query:
        # API_CreateMultipartUpload.html, Permissions: "kms:GenerateDataKey action for the CreateMultipartUpload
        # API. Then, the requester needs permissions for the kms:Decrypt action on the UploadPart and
        # UploadPartCopy APIs" (the upload's own key, whatever the copy source's).
        kms_key = _upload_kms_key(account, bucket, query["uploadId"][0])
        if kms_key and not kms_key.startswith("alias/aws/"):
            needs.append(("kms:Decrypt", _kms_arn(kms_key, region, account), via_s3))
    return needs


def _upload_kms_key(account: str, bucket: str, upload_id: str) -> str | None:
    from moto.s3.models import s3_backends

    try:
        upload = s3_backends[account]["aws"].get_bucket(bucket).multiparts[upload_id]
    except Exception:  # an unknown upload: S3 answers NoSuchUpload after authorization
        return None
    if upload.sse_encryption in ("aws:kms", "aws:kms:dsse"):
        return upload.kms_key_id or "alias/aws/s3"
    return None


def _param(response: Any, path: str) -> str | None:
    head, _, rest = path.partition(".")
    value = response._get_param(head)
    for part in rest.split(".") if rest else ():
        value = value.get(part) if isinstance(value, dict) else None
    return value


def service_requirements(response: Any, service: str, action: str) -> list[tuple[str, str, dict]] | None:
    """(action, resource, context) for a Glue, SSM or KMS call; None: moto's own check (other services)."""
    region, account = response.region, response.current_account
    qualified = f"{service}:{action}"
    if service == "glue":
        catalog = f"arn:aws:glue:{region}:{account}:catalog"
        database, table = None, None
        if action in GLUE_TABLE_PARAM:
            db_path, table_path = GLUE_TABLE_PARAM[action]
            database, table = _param(response, db_path), _param(response, table_path)
        elif action in GLUE_DATABASE_PARAM:
            database = _param(response, GLUE_DATABASE_PARAM[action])
            table = "*" if action == "GetTables" else None
        else:  # partitions and the rest: DatabaseName + TableName
            database, table = _param(response, "DatabaseName"), _param(response, "TableName")
        resources = [catalog]
        if database:
            resources.append(f"arn:aws:glue:{region}:{account}:database/{database.lower()}")
            if table:
                resources.append(f"arn:aws:glue:{region}:{account}:table/{database.lower()}/{table.lower()}")
        return [(qualified, r, {}) for r in resources]
    if service == "ssm" and action in ("GetParameter", "GetParameters"):
        names = [_param(response, "Name")] if action == "GetParameter" else (_param(response, "Names") or [])
        needs = []
        for name in names:
            needs.append((qualified, f"arn:aws:ssm:{region}:{account}:parameter/{str(name).lstrip('/')}", {}))
            if _param(response, "WithDecryption"):
                key_id = _ssm_key(account, region, str(name))
                if key_id and not key_id.startswith("alias/aws/"):  # AWS managed keys: the key policy grants it
                    needs.append(("kms:Decrypt", _kms_arn(key_id, region, account),
                                  {"kms:ViaService": f"ssm.{region}.amazonaws.com"}))
        return needs
    if service == "kms":
        key_id = _param(response, "KeyId")
        return [(qualified, _kms_arn(key_id, region, account) if key_id else "*", {})]
    if service == "iam" and action == "GetRole":  # decided here so that the audit shows it
        return [(qualified, f"arn:aws:iam::{account}:role/{_param(response, 'RoleName')}", {})]
    return None


def _ssm_key(account: str, region: str, name: str) -> str | None:
    from moto.ssm.models import ssm_backends

    try:
        param = ssm_backends[account][region].get_parameter(name)
    except Exception:
        return None
    return getattr(param, "keyid", None) if param is not None and param.parameter_type == "SecureString" else None


# ------------------------------------------------------------------------------ the patches


def _authorize(original: Any) -> Any:
    def authenticate_and_authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        principal = _principal(self)
        if principal is None:
            return original(self, iam_request_cls, resource)
        from moto.iam.access_control import S3IAMRequest

        parsed = urlparse(self.uri)
        path = self.raw_path + ("?" + parsed.query if parsed.query else "")
        action = self._get_action() if iam_request_cls is not S3IAMRequest else self.data.get("Action", "")
        request = iam_request_cls(account_id=self.current_account, method=self.method, path=path, data=self.data,
                                  body=self.raw_body, headers=self.headers, action=action)
        if request._service != "emr-serverless":
            # moto computes EMR Serverless signatures wrong (SignatureDoesNotMatch for any principal's valid
            # request); the signature is not what these tests examine, the policy is
            request.check_signature()
        if iam_request_cls is S3IAMRequest:
            bucket, key = _bucket_and_key(resource)
            needs = s3_requirements(self, bucket, key)
        else:
            needs = service_requirements(self, request._service, action)
            if needs is None:
                return request.check_action_permitted(resource)
        for needed, arn, context in needs:
            if not principal.allows(needed, arn, context):
                who = request._access_key.arn
                log.warning("IAM denied %s on %s to %s", needed, arn, who)
                if iam_request_cls is S3IAMRequest:
                    request._raise_access_denied()
                if request._service == "iam":  # moto's own XML AccessDenied
                    request._raise_access_denied()
                from moto.core.exceptions import JsonRESTError  # Glue, SSM, KMS speak JSON

                raise JsonRESTError("AccessDeniedException",
                                    f"User: {who} is not authorized to perform: {needed} on resource: {arn}")

    return authenticate_and_authorize


def _bucket_and_key(resource: str) -> tuple[str | None, str | None]:
    path = resource.split(":::", 1)[1]
    bucket, sep, key = path.partition("/")
    return (None if bucket == "*" else bucket), (key if sep else None)


def _hide_from_principal(original: Any) -> Any:
    """HEAD/GET of an object: 403 for a missing key without s3:ListBucket; lock headers only with permission."""

    def key_response(self: Any, request: Any, full_url: str) -> Any:
        from moto.s3.exceptions import MissingKey, S3AccessDeniedError

        method = request.method.upper()
        plain_read = method in ("GET", "HEAD") and not any(
            sub in _query(self) for sub, _, _ in KEY_GET_ACTIONS)
        principal = _principal(self) if plain_read else None
        if principal is None:
            return original(self, request, full_url)
        bucket = self.parse_bucket_name_from_url(request, full_url)
        bucket_arn = f"arn:aws:s3:::{bucket}"
        try:
            response = original(self, request, full_url)
        except MissingKey:
            if not principal.allows("s3:ListBucket", bucket_arn, kind="visibility"):
                raise S3AccessDeniedError() from None
            raise
        if not isinstance(response, tuple):
            return response
        status, headers, body = response
        if status == 404 and method == "HEAD" and not principal.allows("s3:ListBucket", bucket_arn,
                                                                       kind="visibility"):
            return 403, {}, ""
        arn = f"{bucket_arn}/{self.parse_key_name()}"
        for action, names in (("s3:GetObjectRetention", LOCK_RETENTION_HEADERS),
                              ("s3:GetObjectLegalHold", LOCK_LEGAL_HOLD_HEADERS)):
            present = [h for h in headers if h.lower() in names]
            if present and not principal.allows(action, arn, kind="visibility"):
                for name in present:
                    del headers[name]
        return status, headers, body

    return key_response


_installed = False


def install() -> None:
    """Patch moto (idempotent); called by ``s3lake_testbed.moto_server`` before the server starts."""
    global _installed
    if _installed:
        return
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.s3.responses import S3Response

    ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize(
        ActionAuthenticatorMixin._authenticate_and_authorize_action)
    S3Response._key_response = _hide_from_principal(S3Response._key_response)
    _allow_job_arns()
    _installed = True


def _allow_job_arns() -> None:
    """moto refuses a policy naming an S3 resource with a region but for access points; S3 Batch Operations
    jobs are such a resource (``arn:aws:s3:<region>:<account>:job/<id>``, the Service Authorization
    Reference's ``job`` type), so a policy scoping s3:DescribeJob to them is valid in IAM."""
    from moto.iam import policy_validation

    starts = policy_validation.SERVICE_TYPE_REGION_INFORMATION_ERROR_ASSOCIATIONS["s3"].setdefault(
        "valid_starting_values", [])
    if "job/" not in starts:
        starts.append("job/")
