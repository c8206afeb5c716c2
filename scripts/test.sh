#!/usr/bin/env bash
# The test command: set up (or reuse) the environment, then run the CPU test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k metrics`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
