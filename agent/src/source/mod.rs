//! Sources of the cluster model: manifest files and (in the agent) the Kubernetes API.
//!
//! Every source produces k8s-openapi objects and hands them to [`convert`], the one place
//! where objects are validated and turned into the [`crate::model`].
pub mod convert;

pub use convert::{convert, Converted, Objects, SourceError, Sourced};
pub mod manifest;

pub use manifest::{load, Loaded};
