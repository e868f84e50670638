//! The names that the server, the client and Kubernetes objects share: the labels the client
//! puts on the Secrets and pods it creates and the server's owner watch selects by, and the
//! names of a download redirected to the object store.

/// Label carrying the resource id on Secrets the client creates or prints (`upload --output
/// secret`, `submit`); the server's owner watch finds a resource's owners by it.
pub const RESOURCE_LABEL: &str = "staging-server/resource-id";

/// Label tying the Secret and the pods of one `submit` to its submission.
pub const SUBMISSION_LABEL: &str = "staging-server/submission";

/// The well-known label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// [`MANAGED_BY_LABEL`]'s value on what the client creates; the owner watch selects by it.
pub const MANAGED_BY: &str = "staging-server";

/// Query parameter of a v1 download (`/content`, `/files/{name}`) by which a client asks to be
/// served by the server itself, never redirected to the object store (`?redirect=false`):
/// what `fetch` sends after the store refused a redirected download.
pub const REDIRECT_PARAM: &str = "redirect";

/// Header of a download redirected to the object store (307) carrying the object's size in
/// bytes: the redirect's own `Content-Length` is that of its empty body. Beside it the redirect
/// carries the `ETag` and `Repr-Digest` the direct download would, for the client to check the
/// bytes the store sends.
pub const OBJECT_SIZE_HEADER: &str = "staging-object-size";
