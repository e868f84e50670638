//! The names that the server, the client and Kubernetes objects share: the labels the client
//! puts on the Secrets and pods it creates and the server's owner watch selects by.

/// Label carrying the resource id on Secrets the client creates or prints (`upload --output
/// secret`, `submit`); the server's owner watch finds a resource's owners by it.
pub const RESOURCE_LABEL: &str = "staging-server/resource-id";

/// Label tying the Secret and the pods of one `submit` to its submission.
pub const SUBMISSION_LABEL: &str = "staging-server/submission";

/// The well-known label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// [`MANAGED_BY_LABEL`]'s value on what the client creates; the owner watch selects by it.
pub const MANAGED_BY: &str = "staging-server";
