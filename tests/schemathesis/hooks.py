"""Rules the OpenAPI document states in words because JSON Schema cannot spell them.

The document carries every constraint a JSON Schema can express (lengths, patterns,
ranges, required fields, `minProperties`, ...). A few rules of the API are not of that
kind, and a request that is valid by the schema may still break one of them:

- a workflow's links name nodes of the same graph, and the graph has no cycle;
- an asset reference names an asset of the caller;
- an `Idempotency-Key` reused with another body is refused;
- a `cursor` is one the server issued for the same query;
- lengths are bounded in bytes of UTF-8, where JSON Schema counts characters;
- integers are written without a fraction (`2`, not `2.0`), where JSON Schema counts
  `2.0` as an integer too;
- a webhook URL is an absolute http(s) URL with a host, no credentials, at a public
  address (not loopback, private, link-local or metadata), at most 2048 bytes: a URL's
  grammar and address classes are beyond a JSON Schema pattern.

And one thing the other way round: in `multipart/form-data` every part is text, so a
value of the wrong type (`tags: null`) reaches the server as text that may well be
valid (a tag `null`). A "schema-violating request accepted" failure on a form is
dropped only when the form as sent, read as the server reads it, is valid.

The server refuses such requests with the documented 4xx. This hook drops a
"schema-valid request rejected" failure only when the server's error code names one of
these rules and the run shows that the request does break it: the request itself, or
what the server answered before (keys it accepted, cursors and assets it issued).
Everything else fails the run. Schemathesis counts the dropped failures in its summary.
"""

import json
import re
import os

import jsonschema_rs
import schemathesis

# Byte limits (characters in the document): metadata keys and values, file paths, tags.
LABEL_KEY_BYTES = 64
LABEL_VALUE_BYTES = 512
FILE_PATH_BYTES = 1024
TAG_BYTES = 64

GRAPH_RULES = {"missing_link_source", "cycle"}


def _over(text, limit):
    return isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > limit


def _error(response):
    try:
        return json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return {}


def _whole_float(value):
    return isinstance(value, float) and value.is_integer()


def _graph_input(body, node, field):
    """The value of input `field` of `node`, in the graph or in a saved `/prompt` body."""
    workflow = body.get("workflow")
    for graph in (workflow, (workflow or {}).get("prompt") if isinstance(workflow, dict) else None):
        if isinstance(graph, dict) and isinstance(graph.get(node), dict):
            inputs = graph[node].get("inputs")
            if isinstance(inputs, dict) and field in inputs:
                return inputs[field]
    return None


ANNOTATION = re.compile(r"\[(input|output|temp)\]$")


def _unsafe_file_value(value):
    """What `validate::check_file_input` refuses. Which inputs name files depends on the
    node's class, which JSON Schema cannot follow, so the rule is checked here instead."""
    if isinstance(value, list):
        return True  # a link into a file input: its value is only known at run time
    if isinstance(value, dict):
        return value.get("__type") != "core/ASSET"
    if not isinstance(value, str):
        return False
    return (
        value == ""
        or "\0" in value
        or bool(ANNOTATION.search(value))
        or value.startswith(("/", "\\", "asset_"))
        or value[1:2] == ":"
        or ".." in value
        or "/" in value
        or "\\" in value
        or len(value.encode("utf-8", "surrogatepass")) > 255
    )


def _is_graph_rule(body, node, error):
    if error.get("reason") in GRAPH_RULES:
        return True
    if error.get("reason") == "unsafe_file_input":
        return _unsafe_file_value(_graph_input(body, node, error.get("field")))
    # A link whose output index is a whole float.
    link = _graph_input(body, node, error.get("field"))
    return (
        error.get("reason") == "invalid_link"
        and isinstance(link, list)
        and len(link) == 2
        and isinstance(link[0], str)
        and _whole_float(link[1])
    )


# What the server answered so far in this run (one tenant per run).
ACCEPTED_KEYS = set()
ISSUED_CURSORS = set()
LIVE_ASSETS = set()


def _header(case, name):
    for key, value in (case.headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def _filters(case):
    metadata = (case.query or {}).get("metadata")
    return frozenset(metadata.items()) if isinstance(metadata, dict) else frozenset()


@schemathesis.hook
def after_call(context, case, response):
    """Records what the server issued; never changes anything."""
    operation = f"{case.method.upper()} {case.operation.path}"
    try:
        answer = json.loads(response.content) if response.content else None
    except ValueError:
        answer = None
    if operation == "POST /api/v2/jobs" and response.status_code == 201:
        key = _header(case, "Idempotency-Key")
        if key is not None:
            ACCEPTED_KEYS.add(key)
    elif operation == "GET /api/v2/jobs" and response.status_code == 200 and isinstance(answer, dict):
        if answer.get("next_cursor"):
            ISSUED_CURSORS.add((answer["next_cursor"], _filters(case)))
    elif operation == "DELETE /api/v2/assets/{id}" and response.status_code == 204:
        LIVE_ASSETS.discard((case.path_parameters or {}).get("id"))
    elif response.status_code in (200, 201) and isinstance(answer, dict) and "asset_" in str(answer.get("id")):
        LIVE_ASSETS.add(answer["id"])


def _body(case):
    return case.body if isinstance(case.body, dict) else {}


WEBHOOK_URL_BYTES = 2048


def _not_a_public_http_url(raw):
    """Whether `raw` breaks the webhook URL rule, judged independently of the server:
    Python's URL parser and `ipaddress`, not the server's WHATWG parser."""
    import ipaddress
    from urllib.parse import urlsplit

    if not isinstance(raw, str) or _over(raw, WEBHOOK_URL_BYTES):
        return True
    if any(ord(c) < 0x21 or c in "<>\\^`{|}\"" or ord(c) == 0x7F for c in raw.strip()):
        return True  # not a URL as written (the server's parser refuses or rewrites it)
    try:
        parts = urlsplit(raw.strip())
        host = parts.hostname
        parts.port  # raises on a bad port
    except ValueError:
        return True
    if parts.scheme.lower() not in ("http", "https") or not host:
        return True
    if parts.username is not None or parts.password is not None:
        return True
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        pass
    # A name: refused if it is not a valid host name (the server's parser refuses it).
    labels = host.split(".")
    return not all(labels) or any(not re.fullmatch(r"[a-z0-9_-]{1,63}", label) for label in labels)


def _breaks_unspellable_rule(case, response):
    """Whether the refusal names a rule the schema cannot spell, broken by this request."""
    error = _error(response)
    code = error.get("code")
    body = _body(case)
    operation = f"{case.method.upper()} {case.operation.path}"
    if operation == "POST /api/v2/jobs" and response.status_code == 422:
        if code == "invalid_workflow":
            node_errors = (error.get("details") or {}).get("node_errors") or {}
            return bool(node_errors) and all(
                _is_graph_rule(body, node, e) for node, errors in node_errors.items() for e in errors
            )
        if code == "missing_asset":
            return (error.get("details") or {}).get("asset_id") not in LIVE_ASSETS
        if code == "idempotency_key_reuse":
            return _header(case, "Idempotency-Key") in ACCEPTED_KEYS
        if code == "metadata_invalid":
            labels = body.get("metadata") or {}
            return any(_over(k, LABEL_KEY_BYTES) or _over(v, LABEL_VALUE_BYTES) for k, v in labels.items())
    if operation == "GET /api/v2/jobs" and response.status_code == 400:
        query = case.query or {}
        if code == "invalid_cursor":
            return "cursor" in query and (query["cursor"], _filters(case)) not in ISSUED_CURSORS
        if code == "invalid_metadata_filter":
            return any(_over(k, LABEL_KEY_BYTES) for k in (query.get("metadata") or {}))
    if operation == "POST /api/v2/x-serverless-comfyui/webhooks" and response.status_code == 422:
        if code == "invalid_webhook_url":
            return _not_a_public_http_url(body.get("url"))
    if response.status_code == 422 and code == "invalid_request" and "floating point" in error.get("message", ""):
        return any(_whole_float(value) for value in body.values())
    if response.status_code == 422 and code == "invalid_file_path":
        return _over(body.get("file_path"), FILE_PATH_BYTES)
    if response.status_code == 422 and code == "invalid_tags":
        tags = body.get("tags") or []
        return any(_over(tag, TAG_BYTES) for tag in (tags if isinstance(tags, list) else [tags]))
    return False


def _as_sent(value):
    """A form value as the text of its part (the file's bytes stay bytes)."""
    if isinstance(value, (str, bytes)):
        return value
    return json.dumps(value)


def _form_as_read(case):
    """The form as the server reads it: text parts, `tags` a list of every such part."""
    schema = case.operation.schema.raw_schema["components"]["schemas"]["AssetUploadForm"]
    form = {}
    for name, value in _body(case).items():
        if name == "file":
            form[name] = ""  # bytes: valid as `format: binary`
        elif schema["properties"].get(name, {}).get("type") == "array":
            form[name] = [_as_sent(v) for v in value] if isinstance(value, list) else [_as_sent(value)]
        elif isinstance(value, list):
            return None  # repeated parts: the server refuses a repeated known part
        else:
            form[name] = _as_sent(value)
    return schema, form


def _valid_as_sent(case):
    if not (case.media_type or "").startswith("multipart/form-data"):
        return False
    read = _form_as_read(case)
    if read is None:
        return False
    schema, form = read
    return jsonschema_rs.validator_for(schema).is_valid(form)


def _log(case, response, why):
    if os.environ.get("SCHEMATHESIS_HOOKS_LOG"):
        with open(os.environ["SCHEMATHESIS_HOOKS_LOG"], "a") as log:
            log.write(f"{why} {case.method} {case.operation.path} {response.status_code} {_error(response).get('code')}\n")


@schemathesis.hook
def filter_failure(context, failure, case, response):
    code = getattr(failure, "code", None)
    if code == "ST201" and _valid_as_sent(case):
        _log(case, response, "valid-as-sent")
        return False
    if code == "ST202" and _breaks_unspellable_rule(case, response):
        _log(case, response, "unspellable")
        return False
    return True
