"""mapemesh benchmarks: each compares mapemesh with a baseline measured in the same run."""
