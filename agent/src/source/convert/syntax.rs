//! Syntax checks of apimachinery's `util/validation`, which the API server applies to label
//! keys and values, port names and port numbers. Messages follow upstream wording so users can
//! search for them.

/// Upstream `qualifiedNameMaxLength` / `LabelValueMaxLength`.
const NAME_MAX: usize = 63;
/// Upstream `DNS1123SubdomainMaxLength`.
const SUBDOMAIN_MAX: usize = 253;

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`: the name part of a qualified name and a label
/// value share this format.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: lowercase labels `[a-z0-9]([-a-z0-9]*[a-z0-9])?` joined by dots.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= SUBDOMAIN_MAX
        && !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// `IsQualifiedName`: a label key, `[prefix/]name`. Returns the problems found (empty: valid).
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("{key:?}: prefix part must be non-empty"));
            } else if !is_dns1123_subdomain(prefix) {
                errs.push(format!(
                    "{key:?}: prefix part must be a lowercase RFC 1123 subdomain (at most {SUBDOMAIN_MAX} characters)"
                ));
            }
            *name
        }
        _ => {
            errs.push(format!(
                "{key:?}: a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("{key:?}: name part must be non-empty"));
    } else if name.len() > NAME_MAX {
        errs.push(format!(
            "{key:?}: name part must be no more than {NAME_MAX} characters"
        ));
    } else if !is_qualified_name_part(name) {
        errs.push(format!(
            "{key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    errs
}

/// `IsValidLabelValue`: empty, or at most 63 characters of the qualified-name format.
pub fn label_value_errors(value: &str) -> Vec<String> {
    if value.is_empty() {
        Vec::new()
    } else if value.len() > NAME_MAX {
        vec![format!(
            "{value:?}: a label value must be no more than {NAME_MAX} characters"
        )]
    } else if !is_qualified_name_part(value) {
        vec![format!(
            "{value:?}: a label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )]
    } else {
        Vec::new()
    }
}

/// `IsValidPortName` (IANA_SVC_NAME): 1-15 characters of `[-a-z0-9]`, at least one letter, no
/// leading, trailing or doubled hyphen.
pub fn port_name_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.is_empty() || name.len() > 15 {
        errs.push(format!("{name:?}: must be no more than 15 characters"));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push(format!(
            "{name:?}: must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
        ));
    }
    if !name.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push(format!("{name:?}: must contain at least one letter (a-z)"));
    }
    if name.contains("--") {
        errs.push(format!("{name:?}: must not contain consecutive hyphens"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push(format!("{name:?}: must not begin or end with a hyphen"));
    }
    errs
}

/// `IsDNS1123Label` (Service and EndpointSlice port names): 1-63 characters of `[-a-z0-9]`,
/// starting and ending with an alphanumeric character.
pub fn dns1123_label_errors(name: &str) -> Vec<String> {
    let b = name.as_bytes();
    let mut errs = Vec::new();
    if b.len() > NAME_MAX {
        errs.push(format!(
            "{name:?}: must be no more than {NAME_MAX} characters"
        ));
    }
    let ok = !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !ok {
        errs.push(format!(
            "{name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ));
    }
    errs
}

/// `IsValidPortNum`: 1..=65535.
pub fn port_number(n: i32) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("{n}: must be between 1 and 65535, inclusive")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        for ok in [
            "app",
            "k8s-app",
            "kubernetes.io/metadata.name",
            "a.b_c-d",
            "example.com/MyName",
            "A1",
        ] {
            assert!(qualified_name_errors(ok).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "/app",
            "a/b/c",
            "-app",
            "app-",
            "app name",
            "Example.com/app",
            "example.com/",
            &"x".repeat(64),
        ] {
            assert!(!qualified_name_errors(bad).is_empty(), "{bad}");
        }
        assert!(qualified_name_errors(&"x".repeat(63)).is_empty());
    }

    #[test]
    fn label_values() {
        for ok in ["", "web", "v1.2_3-x", &"v".repeat(63)] {
            assert!(label_value_errors(ok).is_empty(), "{ok}");
        }
        for bad in ["-web", "web.", "a b", "a/b", &"v".repeat(64)] {
            assert!(!label_value_errors(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn port_names() {
        for ok in ["http", "dns-tcp", "h2c", "metrics", "a", "x-1-y"] {
            assert!(port_name_errors(ok).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "80",
            "HTTP",
            "-http",
            "http-",
            "dns--tcp",
            "a_b",
            "averyveryverylongname",
        ] {
            assert!(!port_name_errors(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn dns1123_labels() {
        for ok in ["http", "dns-tcp", "8080", "a", &"x".repeat(63)] {
            assert!(dns1123_label_errors(ok).is_empty(), "{ok}");
        }
        for bad in ["", "HTTP", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!dns1123_label_errors(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn port_numbers() {
        assert_eq!(port_number(1), Ok(1));
        assert_eq!(port_number(65535), Ok(65535));
        assert!(port_number(0).is_err());
        assert!(port_number(65536).is_err());
        assert!(port_number(-1).is_err());
    }
}
