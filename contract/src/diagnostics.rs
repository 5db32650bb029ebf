//! How errors are shown to operators: one line with the whole cause chain, because HTTP and
//! database clients hide the useful part (connection refused, DNS, certificate) in the sources.

/// `e` and each distinct cause after it, joined with `": "`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn keeps_each_distinct_cause() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(super::error_chain(&e), "request failed: connection refused");
        let io = std::io::Error::other("same");
        assert_eq!(super::error_chain(&io), "same");
    }
}
