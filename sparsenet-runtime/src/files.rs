//! File helpers every layer uses: atomic writes and how a value read from
//! outside is shown in a message or on a terminal.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that `path` holds either its old contents or all of
/// `bytes`, never a mix: the data go to a temporary file in the same directory,
/// which is flushed to disk, renamed over `path`, and then the directory itself is
/// flushed (on Unix) so that the rename is durable.
///
/// A new file gets the usual permissions (`0o666` less the umask on Unix); an
/// existing file's permissions are kept.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");

    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() {
            tmp.as_file().set_permissions(meta.permissions())?;
        }
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // On failure the returned temp file is dropped, which deletes it.
    tmp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A value read from a file, as an error message shows it: at most 60
/// characters, control characters escaped (a terminal shows `\u{1b}`, not
/// an escape sequence), and the length of the rest when cut. A corrupt file
/// may hold a megabyte of one line where a short field was expected.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::new();
    for c in s.chars().take(MAX) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    let shown: usize = s.chars().take(MAX).map(char::len_utf8).sum();
    if shown < s.len() {
        out.push_str(&format!("... ({} more bytes)", s.len() - shown));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn overwrite_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // A fresh file gets the same mode as `File::create` would give it (not the
        // owner-only mode of a raw temp file).
        let fresh = dir.path().join("fresh");
        write_atomically(&fresh, b"x").unwrap();
        let reference = dir.path().join("reference");
        std::fs::File::create(&reference).unwrap();
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_of(&fresh), mode_of(&reference));
    }

    #[test]
    fn parent_dir_of_bare_name() {
        assert_eq!(parent_dir(Path::new("w.safetensors")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/w.safetensors")), Path::new("a"));
    }

    #[test]
    fn excerpt_cuts_long_values_and_escapes_control_characters() {
        assert_eq!(excerpt("epoch"), "epoch");
        assert_eq!(excerpt("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
        let long = "é".repeat(100);
        let e = excerpt(&long);
        assert!(e.starts_with(&"é".repeat(60)), "{e}");
        assert!(e.ends_with("... (80 more bytes)"), "{e}");
    }
}
