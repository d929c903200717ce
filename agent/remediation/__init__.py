"""Remediation: policy, router, guard rails, executor, pager, journal."""
