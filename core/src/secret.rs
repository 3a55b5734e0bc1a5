//! Secrets given as files (`--jwt-secret-file` and the like), so that they never appear in a
//! process's arguments: the file is read once at start-up, one trailing newline is trimmed, and
//! an unreadable or empty file is an error that names the file.

use std::path::{Path, PathBuf};

/// Why a secret could not be taken from its flag or its file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read --{flag}-file {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--{flag}-file {path} is empty")]
    Empty { flag: &'static str, path: PathBuf },
    #[error("--{flag}-file {path} is not UTF-8 text")]
    NotText { flag: &'static str, path: PathBuf },
    #[error("both --{0} and --{0}-file are given: use one")]
    Both(&'static str),
}

/// Reads the secret in `path` for `--{flag}-file`: its text without one trailing `\n` (or
/// `\r\n`), as `echo secret > file` and Kubernetes Secrets write it.
pub fn read_secret_file(flag: &'static str, path: &Path) -> Result<String, SecretError> {
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        flag,
        path: path.to_owned(),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(SecretError::Empty {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// The secret for `--{flag}`: the value given, or the content of the file given; both is an error.
pub fn secret_or_file(
    flag: &'static str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(SecretError::Both(flag)),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => read_secret_file(flag, path).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wsroute-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    #[test]
    fn one_trailing_newline_is_trimmed() {
        let p = file("nl", b"s3cret\n");
        assert_eq!(
            read_secret_file("mesh-secret", &p).expect("reads"),
            "s3cret"
        );
        let p = file("crlf", b"s3cret\r\n");
        assert_eq!(
            read_secret_file("mesh-secret", &p).expect("reads"),
            "s3cret"
        );
        let p = file("none", b"s3cret");
        assert_eq!(
            read_secret_file("mesh-secret", &p).expect("reads"),
            "s3cret"
        );
        // Only one: a secret may end in whitespace on purpose.
        let p = file("two", b"s3cret \n\n");
        assert_eq!(
            read_secret_file("mesh-secret", &p).expect("reads"),
            "s3cret \n"
        );
    }

    #[test]
    fn empty_missing_and_both_are_errors_naming_the_flag() {
        let p = file("empty", b"\n");
        let e = read_secret_file("api-key", &p).expect_err("empty");
        assert!(e.to_string().contains("--api-key-file"), "{e}");
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = read_secret_file("api-key", Path::new("/nonexistent/key")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/key"), "{e}");
        let e = secret_or_file("jwt-secret", Some("x".into()), Some(&p)).expect_err("both");
        assert!(
            e.to_string().contains("--jwt-secret and --jwt-secret-file"),
            "{e}"
        );
        assert_eq!(
            secret_or_file("jwt-secret", None, None).expect("none"),
            None
        );
    }
}
