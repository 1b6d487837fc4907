"""Speed and cost measurements of maskprune (`python -m benchmarks`); not run as timed tests."""
