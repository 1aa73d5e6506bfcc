"""data_shards.io.redact: the one way a URL's credentials are kept out of files and logs."""
import logging

import pytest

from data_shards.io import redact, redacted

PRESIGNED_V4 = ("https://bucket.s3.amazonaws.com/cub/train?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
                "&X-Amz-Expires=3600&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE&X-Amz-SignedHeaders=host"
                "&X-Amz-Signature=0123456789abcdef")
SECRETS = ("secret", "AKIAEXAMPLE", "FQoGZXIvYXdzEXAMPLE", "0123456789abcdef", "v2signature", "azuresig", "tok123",
           "hunter2")


@pytest.mark.parametrize("url, expected", [
    ("s3://AKIA:secret@bucket/x", "s3://REDACTED@bucket/x"),
    ("https://user:hunter2@host:8443/data?page=2", "https://REDACTED@host:8443/data?page=2"),
    ("https://tok123@host/x", "https://REDACTED@host/x"),
    (PRESIGNED_V4, "https://bucket.s3.amazonaws.com/cub/train?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                   "&X-Amz-Credential=REDACTED&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
                   "&X-Amz-Security-Token=REDACTED&X-Amz-SignedHeaders=host&X-Amz-Signature=REDACTED"),
    ("https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAEXAMPLE&Expires=1700000000&Signature=v2signature%3D",
     "https://b.s3.amazonaws.com/k?AWSAccessKeyId=REDACTED&Expires=1700000000&Signature=REDACTED"),
    ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig=azuresig",
     "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig=REDACTED"),
    ("http://host/x.tar?token=tok123#frag", "http://host/x.tar?token=REDACTED#frag"),
    # nothing to hide: unchanged
    ("s3://bucket/runs/x", "s3://bucket/runs/x"),
    ("s3://bucket/key@v2/x", "s3://bucket/key@v2/x"),
    ("https://host/p?mail=a@b.c&page=1", "https://host/p?mail=a@b.c&page=1"),
    ("/data/photos@2x/a.jpg", "/data/photos@2x/a.jpg"),
    ("runs", "runs"),
    ("", ""),
])
def test_redact_url_shapes(url, expected):
    assert redact(url) == expected
    assert redact(expected) == expected  # redacting twice changes nothing: saved and live configs compare


def test_redact_finds_urls_inside_lines_and_nested_reports():
    line = f"error: data.train='s3://AKIA:secret@bucket/x' and data.eval={PRESIGNED_V4}: nothing is there"
    out = redact(line)
    assert not any(s in out for s in SECRETS)
    assert out.startswith("error: data.train='s3://REDACTED@bucket/x' and data.eval=https://bucket.s3.amazonaws.com/")
    report = {"photos": "s3://AKIA:secret@bucket/p", "n": 3, "ok": True, "none": None,
              "segmented": [{"photo": PRESIGNED_V4, "mask": ("https://u:hunter2@h/m.png",)}]}
    clean = redacted(report)
    assert not any(s in repr(clean) for s in SECRETS)
    assert clean["n"] == 3 and clean["ok"] is True and clean["none"] is None
    assert isinstance(clean["segmented"][0]["mask"], tuple)
    assert report["photos"] == "s3://AKIA:secret@bucket/p", "the caller's values are left as they were"


def test_the_data_layers_warnings_are_redacted(caplog):
    with caplog.at_level(logging.WARNING, logger="data_shards"):
        logging.getLogger("data_shards").warning("%s is damaged after %d samples", "s3://AKIA:secret@b/x.tar", 3)
    assert caplog.messages == ["s3://REDACTED@b/x.tar is damaged after 3 samples"]
