"""The offline harness: the stack under mocks, and what a reviewer reads (plan, diff, cost)."""
