//! Benchmark tools for workbus (see docs/PERFORMANCE.md).
