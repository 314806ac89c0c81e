//! Sources of the cluster model: manifest files and (in the agent) the Kubernetes API.
