"""Identity-keyed rate limits, quotas and concurrency limits (issue 18)."""
