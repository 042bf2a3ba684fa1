"""Operator commands run against a deployed stack: API key, client keys, cache, verify, CI roles."""
