"""A counting reverse proxy in front of moto_server: every AWS request of the local
stack (tests/sdk/aws_stack.py) goes through it, and it records, per caller, service
and operation, the request count and, for DynamoDB, the read and write units the
request would be billed on AWS.

Who called: each part of the local stack signs with its own access key id (`submit`,
`status`, `dispatch`, `tick`, `esm`, `runner`, `agent`, `test` for the set-up); a
presigned URL (a client following `/content`, or PUTting to the upload extension)
is counted as `client`. Service: the SigV4 credential scope. Operation: `X-Amz-Target`
(DynamoDB, SQS, ECS: JSON protocols) or, for S3, the method and what it names.

DynamoDB units are estimated as DynamoDB bills them (on-demand):
- item size: attribute names plus values (strings and binaries by length, numbers
  about one byte per two digits plus one, lists and maps 3 bytes plus one per
  element), as the DynamoDB developer guide describes;
- writes: 1 unit per started KB of the larger of the item before and after
  (`PutItem`, `UpdateItem`, `DeleteItem`, a refused conditional write too), twice
  that inside `TransactWriteItems`; plus each global secondary index the item is in
  before or after: 1 unit per started KB of its projection (2 when its index key
  changes, 0 when nothing it projects changed);
- reads: 1 unit per started 4 KB strongly consistent, half eventually consistent
  (`GetItem` per item; `Query` on the total evaluated before any filter; transactions
  twice).
Set `AWS_COUNT_TRACE=<file>` to append one JSON line per DynamoDB write (caller,
operation, each item's key, size and units, its index units apart: where the units
go) and one per request (caller, operation, when, how long: where a Lambda's
duration goes).
The proxy reads the items before and after a write, and re-runs a filtered query
without its filter, straight from moto (not counted): moto has no
`ReturnConsumedCapacity`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import re
import threading
import time
import os
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
CRED = re.compile(r"Credential=([^/,\s]+)/\d{8}/[^/]+/([^/]+)/aws4_request")


def value_size(v: dict) -> int:
    (kind, x), = v.items()
    if kind == "S":
        return len(x.encode())
    if kind == "N":
        digits = len(x.lstrip("-").replace(".", "").lstrip("0")) or 1
        return (digits + 1) // 2 + 1
    if kind == "B":
        return len(base64.b64decode(x))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in x)
    if kind == "NS":
        return sum(value_size({"N": n}) for n in x)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in x)
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in x)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in x.items())
    raise ValueError(kind)


def item_size(item: dict | None) -> int:
    if not item:
        return 0
    return sum(len(k.encode()) + value_size(v) for k, v in item.items())


def kb_units(size: int) -> int:
    return max(1, math.ceil(size / 1024)) if size else 0


class Counts:
    """Thread-safe counters: (caller, service, operation) -> requests, units, bytes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows = defaultdict(lambda: {"requests": 0, "wcu": 0.0, "rcu": 0.0, "item_bytes": 0})

    def add(self, key, wcu=0.0, rcu=0.0, item_bytes=0):
        with self.lock:
            row = self.rows[key]
            row["requests"] += 1
            row["wcu"] += wcu
            row["rcu"] += rcu
            row["item_bytes"] += item_bytes

    def snapshot(self) -> dict:
        with self.lock:
            return {k: dict(v) for k, v in self.rows.items()}


def diff(after: dict, before: dict) -> dict:
    out = {}
    for key, row in after.items():
        base = before.get(key, {"requests": 0, "wcu": 0.0, "rcu": 0.0, "item_bytes": 0})
        d = {f: row[f] - base[f] for f in row}
        if d["requests"]:
            out[key] = d
    return out


class Dynamo:
    """Uncounted reads straight from moto, for the unit estimates."""

    def __init__(self, upstream: str):
        self.host, self.port = upstream.split(":")
        self.tables = {}
        self.lock = threading.Lock()

    def call(self, op: str, body: dict) -> dict:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        try:
            conn.request(
                "POST",
                "/",
                json.dumps(body),
                {
                    "Content-Type": "application/x-amz-json-1.0",
                    "X-Amz-Target": f"DynamoDB_20120810.{op}",
                    "Authorization": "AWS4-HMAC-SHA256 Credential=proxy/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
                },
            )
            return json.loads(conn.getresponse().read() or b"{}")
        finally:
            conn.close()

    def table(self, name: str) -> dict:
        with self.lock:
            if name not in self.tables:
                t = self.call("DescribeTable", {"TableName": name}).get("Table", {})
                keys = [k["AttributeName"] for k in t.get("KeySchema", [])]
                indexes = [
                    {
                        "keys": [k["AttributeName"] for k in g["KeySchema"]],
                        "projection": g["Projection"].get("ProjectionType", "ALL"),
                        "include": g["Projection"].get("NonKeyAttributes", []),
                    }
                    for g in t.get("GlobalSecondaryIndexes", [])
                ]
                self.tables[name] = {"keys": keys, "indexes": indexes}
            return self.tables[name]

    def get(self, table: str, key: dict) -> dict | None:
        return self.call("GetItem", {"TableName": table, "Key": key, "ConsistentRead": True}).get("Item")

    def key_of(self, table: str, item: dict) -> dict:
        return {k: item[k] for k in self.table(table)["keys"] if k in item}


def projection(item: dict | None, table: dict, index: dict) -> dict | None:
    if not item or any(k not in item for k in index["keys"]):
        return None
    if index["projection"] == "ALL":
        return item
    wanted = set(table["keys"]) | set(index["keys"])
    if index["projection"] == "INCLUDE":
        wanted |= set(index["include"])
    return {k: v for k, v in item.items() if k in wanted}


def write_units(dyn: Dynamo, table: str, before: dict | None, after: dict | None, factor: int) -> tuple[float, int]:
    """Units of one item's write, its indexes included; and the item's size."""
    units, index_units, size = write_units_split(dyn, table, before, after, factor)
    return units + index_units, size


def write_units_split(dyn: Dynamo, table: str, before: dict | None, after: dict | None, factor: int) -> tuple[float, float, int]:
    """(the item's units, its indexes' units, the item's size) of one item's write."""
    size = max(item_size(before), item_size(after))
    item_units = factor * kb_units(size) if size else factor  # a write of nothing still costs 1
    units = 0
    t = dyn.table(table)
    for index in t["indexes"]:
        old, new = projection(before, t, index), projection(after, t, index)
        if old is None and new is None or old == new:
            continue
        key_changed = old is not None and new is not None and any(old[k] != new[k] for k in index["keys"])
        units += kb_units(item_size(old)) if key_changed else 0
        units += kb_units(item_size(new if new is not None else old))
    return item_units, units, size


def read_units(size: int, consistent: bool, factor: float = 1.0) -> float:
    units = max(1, math.ceil(size / 4096))
    return factor * (units if consistent else units / 2)


class Proxy(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.upstream = upstream
        self.counts = Counts()
        self.dynamo = Dynamo(upstream)
        self.write_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The status line and headers, then the body, go out as separate writes: with
    # Nagle's algorithm on, the body waited for the caller's delayed ACK (~40 ms) on
    # a keep-alive connection, a stall AWS does not have that made every Lambda's
    # measured duration longer (a submit by ~45 ms a call).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _forward(self, body: bytes):
        host, port = self.server.upstream.split(":")
        conn = getattr(self, "_conn", None)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                conn.request(self.command, self.path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                self._conn = conn
                return resp.status, resp.getheaders(), data
            except (http.client.HTTPException, OSError):
                conn.close()
                conn = None
                if attempt:
                    raise

    def _who(self):
        auth = self.headers.get("Authorization", "")
        m = CRED.search(auth)
        if m:
            return m.group(1), m.group(2), False
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        cred = query.get("X-Amz-Credential", [""])[0]
        parts = cred.split("/")
        if len(parts) >= 4:
            return "client", parts[3], True
        if "AWSAccessKeyId" in query:  # a SigV2 presigned URL (only S3 has them)
            return "client", "s3", True
        return "unsigned", "unknown", False

    def _s3_operation(self, presigned: bool) -> str:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        suffix = " (presigned)" if presigned else ""
        # The Rust SDK names its S3 operation in the query (`x-id=PutObject`).
        if "x-id" in query:
            return query["x-id"][0] + suffix
        segments = [s for s in url.path.split("/") if s]
        keys = {k for k in query if not k.startswith(("X-Amz-", "response-")) and k not in ("AWSAccessKeyId", "Signature", "Expires")}
        what = "object" if len(segments) > 1 else "bucket"
        extra = f" ?{','.join(sorted(keys))}" if keys else ""
        return f"{self.command} {what}{extra}{suffix}"

    def _handle(self):
        started = time.monotonic()
        body = self._body()
        caller, service, presigned = self._who()
        self._caller = caller
        target = self.headers.get("X-Amz-Target", "")
        op = target.split(".")[-1] if target else (self._s3_operation(presigned) if service == "s3" else self.command)
        before = None
        request = None
        write = service == "dynamodb" and op in WRITES
        # Writes pass one at a time, so the items read before and after each are its
        # own (another caller's write landing in between would be billed to it too).
        with self.server.write_lock if write else contextlib.nullcontext():
            if write:
                request = json.loads(body or b"{}")
                before = [(t, k, self.server.dynamo.get(t, k)) for t, k, _ in write_targets(self.server.dynamo, op, request)]
            try:
                status, headers, data = self._forward(body)
            except OSError:
                # moto is gone (the end of a run): say so without a traceback.
                status, headers, data = 502, [], b""
            wcu = rcu = 0.0
            size = 0
            if service == "dynamodb":
                try:
                    wcu, rcu, size = self._units(op, request if request is not None else json.loads(body or b"{}"), before, data)
                except Exception as e:  # an estimate must not break the run
                    print(f"aws_count: could not estimate {op}: {e!r}")
        self.server.counts.add((caller, service, op), wcu=wcu, rcu=rcu, item_bytes=size)
        if TRACE:
            entry = {"caller": caller, "op": op, "service": service, "at": started, "ms": round((time.monotonic() - started) * 1000, 1)}
            if service == "dynamodb" and op == "GetItem":
                key = json.loads(body or b"{}").get("Key", {})
                entry["key"] = {k: next(iter(v.values())) for k, v in key.items()}
            line = json.dumps(entry)
            with TRACE_LOCK, open(TRACE, "a") as f:
                f.write(line + "\n")
        self.send_response_only(status)
        for k, v in headers:
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(data)
            except OSError:
                pass  # the caller went away

    def _units(self, op, request, before, data):
        dyn = self.server.dynamo
        response = json.loads(data or b"{}")
        if op in WRITES:
            factor = 2 if op == "TransactWriteItems" else 1
            wcu = size = 0
            trace = []
            for (table, key, old) in before:
                new = dyn.get(table, key)
                units, index_units, s = write_units_split(dyn, table, old, new, factor)
                wcu += units + index_units
                size += s
                trace.append({"key": {k: next(iter(v.values())) for k, v in key.items()}, "bytes": s, "units": units, "index_units": index_units})
            if TRACE:
                line = json.dumps({"caller": self._caller, "op": op, "items": trace})
                with TRACE_LOCK, open(TRACE, "a") as f:
                    f.write(line + "\n")
            return wcu, 0.0, size
        if op == "GetItem":
            s = item_size(response.get("Item"))
            return 0.0, read_units(s, request.get("ConsistentRead", False)), s
        if op == "BatchGetItem":
            rcu = size = 0
            for table, items in response.get("Responses", {}).items():
                consistent = request["RequestItems"].get(table, {}).get("ConsistentRead", False)
                for item in items:
                    s = item_size(item)
                    size += s
                    rcu += read_units(s, consistent)
            return 0.0, rcu, size
        if op == "TransactGetItems":
            rcu = size = 0
            for r in response.get("Responses", []):
                s = item_size(r.get("Item"))
                size += s
                rcu += read_units(s, True, 2)
            return 0.0, rcu, size
        if op in ("Query", "Scan"):
            items = response.get("Items", [])
            if "FilterExpression" in request:
                # Billed on what was read before the filter: the same page, unfiltered.
                bare = {k: v for k, v in request.items() if k not in ("FilterExpression", "Select", "ProjectionExpression")}
                names = bare.get("ExpressionAttributeNames")
                used = (bare.get("KeyConditionExpression", "") or "")
                if names:
                    bare["ExpressionAttributeNames"] = {k: v for k, v in names.items() if k in used}
                    if not bare["ExpressionAttributeNames"]:
                        bare.pop("ExpressionAttributeNames")
                values = bare.get("ExpressionAttributeValues")
                if values:
                    bare["ExpressionAttributeValues"] = {k: v for k, v in values.items() if k in used}
                    if not bare["ExpressionAttributeValues"]:
                        bare.pop("ExpressionAttributeValues")
                items = dyn.call(op, bare).get("Items", items)
            elif request.get("Select") == "COUNT" or "ProjectionExpression" in request:
                bare = {k: v for k, v in request.items() if k not in ("Select", "ProjectionExpression")}
                names = bare.get("ExpressionAttributeNames")
                if names and "ProjectionExpression" in request:
                    used = bare.get("KeyConditionExpression", "")
                    bare["ExpressionAttributeNames"] = {k: v for k, v in names.items() if k in used}
                    if not bare["ExpressionAttributeNames"]:
                        bare.pop("ExpressionAttributeNames")
                items = dyn.call(op, bare).get("Items", items)
            s = sum(item_size(i) for i in items)
            return 0.0, read_units(s, request.get("ConsistentRead", False)), s
        return 0.0, 0.0, 0

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


TRACE = os.environ.get("AWS_COUNT_TRACE")
TRACE_LOCK = threading.Lock()
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}


def write_targets(dyn: Dynamo, op: str, request: dict):
    """(table, key, kind) of every item a write request touches."""
    if op == "PutItem":
        yield request["TableName"], dyn.key_of(request["TableName"], request["Item"]), "put"
    elif op in ("UpdateItem", "DeleteItem"):
        yield request["TableName"], request["Key"], op
    elif op == "TransactWriteItems":
        for entry in request["TransactItems"]:
            (kind, body), = entry.items()
            key = body.get("Key") or dyn.key_of(body["TableName"], body["Item"])
            yield body["TableName"], key, kind
    elif op == "BatchWriteItem":
        for table, entries in request["RequestItems"].items():
            for entry in entries:
                if "PutRequest" in entry:
                    yield table, dyn.key_of(table, entry["PutRequest"]["Item"]), "put"
                else:
                    yield table, entry["DeleteRequest"]["Key"], "delete"
