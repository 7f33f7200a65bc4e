//! Turning SDK errors into the ports' messages: one place, so every adapter says the
//! same things the same way.

use std::error::Error;

use aws_sdk_s3::error::DisplayErrorContext;

/// "`op` on `resource`: the error chain", for `Unavailable` variants. The SDK's error
/// chain names the service error code and message; it carries no credentials.
pub(crate) fn describe(op: &str, resource: &str, err: &(dyn Error + 'static)) -> String {
    format!("{op} on {resource}: {}", DisplayErrorContext(err))
}
