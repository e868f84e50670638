//! The names that the server, the client and Kubernetes objects share: the labels the client
//! puts on the Secrets and pods it creates and the server's owner watch selects by.

/// Label carrying the resource id on Secrets the client creates or prints (`upload --output
/// secret`, `submit`); the server's owner watch finds a resource's owners by it.
pub const RESOURCE_LABEL: &str = "staging-server/resource-id";

/// Label tying the Secret and the pods of one `submit` to its submission.
pub const SUBMISSION_LABEL: &str = "staging-server/submission";

/// `app.kubernetes.io/managed-by` value on what the client creates.
pub const MANAGED_BY: &str = "staging-server";
