//! API errors as upstream's `Status` objects: the HTTP code, `reason`, `message` and
//! `details` that kubectl and client libraries parse (`k8s.io/apimachinery/pkg/api/errors`
//! and `pkg/util/validation/field`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

use crate::registry::ResourceInfo;

/// An API error: a `Status` with `status: Failure`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.message.as_deref().unwrap_or_default())]
pub struct StatusError(pub Box<Status>);

impl StatusError {
    /// The HTTP status code to answer with.
    pub fn code(&self) -> u16 {
        self.0.code.unwrap_or(500) as u16
    }

    /// The machine-readable reason (`NotFound`, `Conflict`, ...).
    pub fn reason(&self) -> &str {
        self.0.reason.as_deref().unwrap_or_default()
    }
}

fn failure(
    code: i32,
    reason: &str,
    message: String,
    details: Option<StatusDetails>,
) -> StatusError {
    StatusError(Box::new(Status {
        code: Some(code),
        details,
        message: Some(message),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
        ..Default::default()
    }))
}

fn resource_details(r: &ResourceInfo, name: &str) -> Option<StatusDetails> {
    Some(StatusDetails {
        group: (!r.group.is_empty()).then(|| r.group.to_string()),
        kind: Some(r.plural.to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    })
}

/// A failure with causes (eviction refusals, apply conflicts).
pub fn with_causes(
    code: i32,
    reason: &str,
    message: String,
    causes: Vec<StatusCause>,
) -> StatusError {
    failure(
        code,
        reason,
        message,
        Some(StatusDetails {
            causes: Some(causes),
            ..Default::default()
        }),
    )
}

/// 429: the server refuses for now (`Retry-After` as `retryAfterSeconds` when
/// non-zero), with causes (an eviction a disruption budget blocks).
pub fn too_many_requests(message: &str, retry_after: i32, causes: Vec<StatusCause>) -> StatusError {
    failure(
        429,
        "TooManyRequests",
        message.to_string(),
        Some(StatusDetails {
            causes: Some(causes),
            retry_after_seconds: (retry_after > 0).then_some(retry_after),
            ..Default::default()
        }),
    )
}

/// A failure with a code and message only (no reason), as some upstream handlers answer.
pub fn failure_without_reason(code: i32, message: &str) -> StatusError {
    StatusError(Box::new(Status {
        code: Some(code),
        message: Some(message.to_string()),
        status: Some("Failure".to_string()),
        ..Default::default()
    }))
}

/// 404: `pods "x" not found`.
pub fn not_found(r: &ResourceInfo, name: &str) -> StatusError {
    let msg = format!("{} \"{name}\" not found", r.qualified_name());
    failure(404, "NotFound", msg, resource_details(r, name))
}

/// 409: `pods "x" already exists`.
pub fn already_exists(r: &ResourceInfo, name: &str) -> StatusError {
    let msg = format!("{} \"{name}\" already exists", r.qualified_name());
    failure(409, "AlreadyExists", msg, resource_details(r, name))
}

/// The detail of an update that lost an optimistic-concurrency race.
pub const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// 409: `Operation cannot be fulfilled on pods "x": <why>`.
pub fn conflict(r: &ResourceInfo, name: &str, why: &str) -> StatusError {
    let msg = format!(
        "Operation cannot be fulfilled on {} \"{name}\": {why}",
        r.qualified_name()
    );
    failure(409, "Conflict", msg, resource_details(r, name))
}

/// 400 with a free-form message.
pub fn bad_request(message: impl Into<String>) -> StatusError {
    failure(400, "BadRequest", message.into(), None)
}

/// 403: `pods "x" is forbidden: <why>` (or `pods is forbidden: ...` without a name).
pub fn forbidden(r: &ResourceInfo, name: &str, why: &str) -> StatusError {
    let msg = if name.is_empty() {
        format!("{} is forbidden: {why}", r.qualified_name())
    } else {
        format!("{} \"{name}\" is forbidden: {why}", r.qualified_name())
    };
    failure(403, "Forbidden", msg, resource_details(r, name))
}

/// 403 for a request with no resource to name (non-resource paths).
pub fn forbidden_path(message: String) -> StatusError {
    failure(403, "Forbidden", message, None)
}

/// 401: credentials no authenticator accepts.
pub fn unauthorized() -> StatusError {
    failure(401, "Unauthorized", "Unauthorized".into(), None)
}

/// 404 for a path the server does not serve.
pub fn no_route() -> StatusError {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
        Some(StatusDetails::default()),
    )
}

/// 415: a body in a content type the server does not decode.
pub fn unsupported_media_type(content_type: &str) -> StatusError {
    unsupported_media_type_of(
        content_type,
        "application/json, application/yaml, application/vnd.kubernetes.protobuf",
    )
}

/// 415 naming the media types this request accepts.
pub fn unsupported_media_type_of(content_type: &str, accepted: &str) -> StatusError {
    failure(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format - accepted media types include: {accepted} (got {content_type:?})"),
        None,
    )
}

/// 406: no representation the client accepts.
pub fn not_acceptable(accept: &str) -> StatusError {
    failure(
        406,
        "NotAcceptable",
        format!("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {accept:?})"),
        None,
    )
}

/// 422 with a free-form message (patches that do not apply).
pub fn unprocessable(message: impl Into<String>) -> StatusError {
    failure(422, "Invalid", message.into(), None)
}

/// 405: the verb is not served for the resource.
pub fn method_not_supported() -> StatusError {
    failure(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource".into(),
        None,
    )
}

/// 410: a watch or list from a compacted resourceVersion.
pub fn expired(message: impl Into<String>) -> StatusError {
    failure(410, "Expired", message.into(), None)
}

/// 413: a request body over the limit.
pub fn too_large(limit: usize) -> StatusError {
    failure(
        413,
        "RequestEntityTooLarge",
        format!("Request entity too large: limit is {limit}"),
        None,
    )
}

/// 500: `Internal error occurred: <message>`.
pub fn internal(message: impl std::fmt::Display) -> StatusError {
    failure(
        500,
        "InternalError",
        format!("Internal error occurred: {message}"),
        Some(StatusDetails {
            causes: Some(vec![StatusCause {
                message: Some(message.to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    )
}

/// 404 with a message that names no resource (a kubelet's answer).
pub fn not_found_message(message: impl Into<String>) -> StatusError {
    failure(404, "NotFound", message.into(), None)
}

/// 503 with a message.
pub fn unavailable(message: impl Into<String>) -> StatusError {
    failure(503, "ServiceUnavailable", message.into(), None)
}

/// 504: the request did not finish in time.
pub fn timeout(message: impl Into<String>) -> StatusError {
    failure(504, "Timeout", message.into(), None)
}

/// What is wrong with a field (upstream's `field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorType {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    Internal,
}

impl FieldErrorType {
    fn text(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Internal => "Internal error",
        }
    }

    fn cause(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Internal => "InternalError",
        }
    }
}

/// One validation problem at a field path (`spec.containers[0].image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorType,
    /// The offending value as upstream prints it (strings quoted); `None` to omit it.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    /// `Required value` at `field`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorType::Required,
            value: None,
            detail: detail.into(),
        }
    }

    /// `Invalid value: "v": detail` for a string value.
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorType::Invalid,
            value: Some(format!("{value:?}")),
            detail: detail.into(),
        }
    }

    /// `Invalid value: <value>: detail` with the value already printed (numbers, maps).
    pub fn invalid_raw(field: impl Into<String>, value: String, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorType::Invalid,
            value: Some(value),
            detail: detail.into(),
        }
    }

    /// `Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorType::Forbidden,
            value: None,
            detail: detail.into(),
        }
    }

    /// `Duplicate value: "v"`.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorType::Duplicate,
            value: Some(format!("{value:?}")),
            detail: String::new(),
        }
    }

    /// `Unsupported value: "v": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            field: field.into(),
            kind: FieldErrorType::NotSupported,
            value: Some(format!("{value:?}")),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }

    /// The message without the field path (upstream's `ErrorBody`).
    pub fn body(&self) -> String {
        let mut s = match (&self.value, self.kind) {
            (
                Some(v),
                FieldErrorType::NotFound
                | FieldErrorType::Duplicate
                | FieldErrorType::Invalid
                | FieldErrorType::NotSupported
                | FieldErrorType::TooMany,
            ) => format!("{}: {v}", self.kind.text()),
            _ => self.kind.text().to_string(),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// 422: `Pod "x" is invalid: <errors>` (one error as is, several as `[a, b]`), with every
/// error as a cause. `group` and `kind` name the object's kind (`apps`, `Deployment`).
pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> StatusError {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let msg = match errors {
        [] => format!("{qualified} \"{name}\" is invalid"),
        [one] => format!("{qualified} \"{name}\" is invalid: {one}"),
        many => {
            let all: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("{qualified} \"{name}\" is invalid: [{}]", all.join(", "))
        }
    };
    let causes = errors
        .iter()
        .map(|e| StatusCause {
            field: Some(e.field.clone()),
            message: Some(e.body()),
            reason: Some(e.kind.cause().to_string()),
        })
        .collect();
    failure(
        422,
        "Invalid",
        msg,
        Some(StatusDetails {
            causes: Some(causes),
            group: (!group.is_empty()).then(|| group.to_string()),
            kind: Some(kind.to_string()),
            name: Some(name.to_string()),
            ..Default::default()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use serde_json::json;

    fn r(name: &str) -> ResourceInfo {
        *Registry::default().by_name(name)[0]
    }

    fn as_json(e: &StatusError) -> serde_json::Value {
        serde_json::to_value(&e.0).unwrap()
    }

    #[test]
    fn not_found_is_upstreams_json() {
        let e = not_found(&r("pods"), "x");
        assert_eq!(e.code(), 404);
        assert_eq!(
            as_json(&e),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "pods \"x\" not found", "reason": "NotFound",
                   "details": {"name": "x", "kind": "pods"}, "code": 404})
        );
        let e = not_found(&r("deploy"), "web");
        assert_eq!(e.to_string(), "deployments.apps \"web\" not found");
        assert_eq!(as_json(&e)["details"]["group"], "apps");
    }

    #[test]
    fn conflicts() {
        assert_eq!(
            already_exists(&r("svc"), "db").to_string(),
            "services \"db\" already exists"
        );
        let e = conflict(&r("cm"), "c", MODIFIED);
        assert_eq!(e.reason(), "Conflict");
        assert_eq!(
            e.to_string(),
            "Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }

    #[test]
    fn invalid_lists_field_errors_like_upstream() {
        let one = invalid(
            "",
            "Pod",
            "web",
            &[FieldError::required("spec.containers[0].image", "")],
        );
        assert_eq!(one.code(), 422);
        assert_eq!(
            one.to_string(),
            "Pod \"web\" is invalid: spec.containers[0].image: Required value"
        );
        let j = as_json(&one);
        assert_eq!(j["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(j["details"]["causes"][0]["message"], "Required value");
        assert_eq!(j["details"]["kind"], "Pod");
        let two = invalid(
            "apps",
            "Deployment",
            "d",
            &[
                FieldError::invalid(
                    "metadata.name",
                    "Bad_Name",
                    "a lowercase RFC 1123 subdomain ...",
                ),
                FieldError::not_supported(
                    "spec.strategy.type",
                    "Blue",
                    &["Recreate", "RollingUpdate"],
                ),
            ],
        );
        assert_eq!(
            two.to_string(),
            "Deployment.apps \"d\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain ..., spec.strategy.type: Unsupported value: \"Blue\": supported values: \"Recreate\", \"RollingUpdate\"]"
        );
    }

    #[test]
    fn other_codes() {
        assert_eq!(bad_request("x").code(), 400);
        assert_eq!(method_not_supported().code(), 405);
        assert_eq!(
            expired("too old resource version: 1 (5)").reason(),
            "Expired"
        );
        assert_eq!(
            too_large(3 << 20).to_string(),
            "Request entity too large: limit is 3145728"
        );
        assert_eq!(
            internal("boom").to_string(),
            "Internal error occurred: boom"
        );
        assert_eq!(unavailable("x").code(), 503);
        assert_eq!(timeout("x").code(), 504);
    }
}
