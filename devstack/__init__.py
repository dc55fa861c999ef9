"""devstack: the local stack `make run` and the benchmarks start, and the tests reuse. It owns
the stand-ins for what cannot run here in a unit test (the Kubernetes API server and its
issuer, FlyteAdmin, an OAuth2 token endpoint) and the pods Flyte creates. Each stand-in
follows the real program's documented behaviour, says so at its top, and is checked against
the real one in `make e2e` (tests/e2e/test_parity.py, tests/e2e/test_flyte.py).

It may import the product packages; nothing in them may import it, and it must not import
tests.
"""
