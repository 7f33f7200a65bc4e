# Run with .venv-moto/bin/python tests/aws/presign_known_good.py: prints the URLs that
# crates/aws/src/s3.rs embeds as known-good (botocore 1.44.18, pinned through moto).
# botocore's SigV4 query signer over the exact requests the Rust SDK presigns
# (the SDK adds `x-id=<Operation>`, which botocore's generate_presigned_url does not).
import datetime
from unittest import mock
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
base = "https://example-bucket.s3.us-east-1.amazonaws.com"
with mock.patch("botocore.auth.get_current_datetime",
                return_value=datetime.datetime(2026, 1, 2, 3, 4, 5)):
    get = AWSRequest(method="GET", url=base + "/outputs/01JOB/1/fox.png"
        "?x-id=GetObject&response-content-disposition=inline%3B%20filename%3D%22fox.png%22"
        "&response-content-type=image%2Fpng")
    S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=3600).add_auth(get)
    print(get.url)
    put = AWSRequest(method="PUT", url=base + "/uploads/01UP?x-id=PutObject",
                     headers={"Content-Length": "1048576"})
    S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=900).add_auth(put)
    print(put.url)
