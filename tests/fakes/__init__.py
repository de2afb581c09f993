"""Local servers that speak the exchanges' protocols, for tests and benchmarks."""
