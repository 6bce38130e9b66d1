"""Schemathesis hooks for psbroker's OpenAPI test (tests/openapi.rs loads this module through
SCHEMATHESIS_HOOKS).

* A serializer for `application/x-ndjson` batch bodies: the document describes them as the
  sequence of their lines (an array of items); each item goes on its own line.
* A check that narrows `positive_data_acceptance`: the config lets a schema-valid request be
  answered 422, because whether a tenant or admin *exists* is configuration that no static
  schema can state; this check makes sure such a 422 is about exactly that and nothing else.
"""

import json

import schemathesis

# The 422 codes a request that satisfies the schema can still get: names that are well formed
# but not configured (or an admin not allowed to manage that tenant).
UNKNOWN_NAME_CODES = {"unknown_tenant", "unknown_admin", "admin_not_allowed"}


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, list):
        lines = [json.dumps(item) for item in value]
    else:
        # Negative data that is not a sequence at all: sent as the one line it would be.
        lines = [json.dumps(value)]
    return "\n".join(lines).encode("utf-8")


@schemathesis.check
def schema_valid_422_is_only_an_unknown_name(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # the envelope itself is checked by response_schema_conformance
        return None
    if code not in UNKNOWN_NAME_CODES:
        raise AssertionError(
            f"a schema-valid request was refused with 422 `{code}`: either the server refuses "
            f"something the document allows, or the document is missing that rule"
        )
    return None
