//! `netward lint`: the pitfalls users hit when writing NetworkPolicies.
