"""Test support: helpers, fake data and dev tooling shared by tests, benchmarks and the demo."""
