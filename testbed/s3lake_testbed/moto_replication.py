"""GetBucketReplication and GetBucketNotificationConfiguration as S3 answers them, for the moto server process.

moto 5 stores the configuration PutBucketReplication sent but answers GetBucketReplication with
``Filter: {Prefix: ""}`` for every rule (dropping Tag/And filters, the legacy rule Prefix and
SourceSelectionCriteria), so every rule would look like "replicate everything". :func:`install`
makes the answer carry each rule as stored (S3's shape:
https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketReplication.html). Installed by
:mod:`s3lake_testbed.moto_server` before the server starts.

moto also keeps a bucket's ``EventBridgeConfiguration`` but leaves it out of GetBucketNotificationConfiguration's
answer; S3 answers ``<EventBridgeConfiguration/>`` when EventBridge is on
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketNotificationConfiguration.html).
"""

from __future__ import annotations

from typing import Any


def _tags(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [{"Key": t.get("Key", ""), "Value": t.get("Value", "") or ""} for t in items]


def rule_as_s3_answers(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule parsed from the PutBucketReplication XML (xmltodict) -> the GetBucketReplication shape."""
    out: dict[str, Any] = {"ID": rule["ID"], "Status": rule["Status"], "Destination": rule["Destination"]}
    if "Filter" in rule:
        flt = rule["Filter"] or {}
        if "And" in flt:
            both = flt["And"] or {}
            shaped: dict[str, Any] = {"Tags": _tags(both.get("Tag"))}
            if both.get("Prefix") is not None:
                shaped["Prefix"] = both["Prefix"]
            out["Filter"] = {"And": shaped}
        elif "Tag" in flt:
            out["Filter"] = {"Tag": _tags(flt["Tag"])[0]}
        else:
            out["Filter"] = {"Prefix": flt.get("Prefix") or ""}
        out["Priority"] = int(rule.get("Priority") or 0)
        out["DeleteMarkerReplication"] = rule.get("DeleteMarkerReplication") or {"Status": "Disabled"}
    else:  # the legacy (V1) rule: Prefix on the rule, no Filter, no Priority
        out["Prefix"] = rule.get("Prefix") or ""
    if rule.get("SourceSelectionCriteria"):
        out["SourceSelectionCriteria"] = rule["SourceSelectionCriteria"]
    return out


def install() -> None:
    from moto.core.responses import ActionResult
    from moto.s3.exceptions import ReplicationConfigurationNotFoundError
    from moto.s3.responses import S3Response

    def get_bucket_replication(self: Any) -> Any:
        self.data["Action"] = "GetBucketReplication"
        replication = self.backend.get_bucket_replication(self.bucket_name)
        if not replication:
            raise ReplicationConfigurationNotFoundError(bucket_name=self.bucket_name)
        rules = [rule_as_s3_answers(rule) for rule in replication["Rule"]]
        return self.serialized(ActionResult({"ReplicationConfiguration": {"Role": replication["Role"],
                                                                          "Rules": rules}}))

    S3Response.get_bucket_replication = get_bucket_replication

    original_notification = S3Response.get_bucket_notification

    def get_bucket_notification(self: Any) -> Any:
        answer = original_notification(self)
        config = self.backend.get_bucket_notification_configuration(self.bucket_name)
        if config is None or getattr(config, "event_bridge", None) is None:
            return answer
        status, headers, body = answer
        text = body.decode() if isinstance(body, bytes) else str(body)
        closing = "</NotificationConfiguration>"
        if "<EventBridgeConfiguration" not in text and closing in text:
            text = text.replace(closing, f"<EventBridgeConfiguration></EventBridgeConfiguration>{closing}")
        return status, headers, text.encode() if isinstance(body, bytes) else text

    S3Response.get_bucket_notification = get_bucket_notification
