"""Real servers for the HTTP and S3 remotes: `cas serve` and SeaweedFS on 127.0.0.1."""

from __future__ import annotations

import uuid

import pytest
from servers import Seaweed


@pytest.fixture(scope="session")
def s3_bucket(seaweed: Seaweed) -> str:
    return seaweed.bucket("cas-tests")


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """A fresh, empty remote: a new prefix in the shared bucket."""
    return f"s3://{s3_bucket}/t-{uuid.uuid4().hex[:12]}"
