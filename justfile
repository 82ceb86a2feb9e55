# Tasks. `just` comes with the dev environment (.venv/bin/just, from the PyPI package rust-just).
# The README's two commands do not need it: ./dev up and ./dev test.

default:
    @just --list

# install everything into .venv/ and run a node with demo traffic
up *args:
    ./dev up {{args}}

# install everything and run lint, types and the whole test suite
test *args:
    ./dev test {{args}}

# fast tests only (no SIGKILL / cluster fault tests)
test-fast:
    ./dev test -m "not slow"

lint:
    .venv/bin/ruff check mesh node gateway bridge_kafka store tests
    .venv/bin/ruff format --check mesh tests
    .venv/bin/mypy mesh node

bench-publish *args:
    .venv/bin/mesh bench publish {{args}}
