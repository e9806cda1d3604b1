"""Swarms in one process (DESIGN §12, docs/simulation.md).

- `swarm`: nodes that call each other's `NodeService` directly (cheap, for tests);
- `network`, `links`: the real tunnel, block exchange and client over simulated links with
  fault hooks, on virtual time;
- `determinism`: one seed, one run; `model`, `scenario`: model-checked scenarios and their
  report (`python -m simulations`, `make sim`).
"""
