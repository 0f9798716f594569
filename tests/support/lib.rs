//! Shared helpers of the workspace tests and benchmarks.
