//! Shared helpers for netward integration tests (network namespaces, test API server).
pub mod apiserver;
pub mod lab;
