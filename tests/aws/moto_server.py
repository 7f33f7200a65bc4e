"""moto_server, with DynamoDB's conditional writes made atomic as on AWS.

moto serves requests on threads and its DynamoDB backend checks a write's condition
and then applies it without a lock, so two concurrent conditional writes expecting the
same revision can both succeed (measured: 11 of 200 races of four writers had two
winners). DynamoDB applies each conditional write atomically, and the lease protocol
relies on that: the chaos suite on moto saw a job committed twice through this race.
This wrapper serializes the backend's writes (reads are left alone) and otherwise runs
moto_server unchanged, with the same arguments. crates/aws/src/testing.rs starts it.
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_WRITES = threading.RLock()


def _serialized(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _WRITES:
            return method(*args, **kwargs)

    return locked


for _name in ("put_item", "update_item", "delete_item", "transact_write_items"):
    setattr(DynamoDBBackend, _name, _serialized(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    sys.exit(main())
