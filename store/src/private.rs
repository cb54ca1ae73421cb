//! Files and directories as the stored log creates them: readable by their owner only (files
//! 0600, directories 0700, less the umask), since they hold every tenant's logs. What exists
//! already keeps its mode.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// `create_dir_all`, new directories 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Opens `path` for appending, creating it 0600.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Creates (or truncates) `path`, new files 0600.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// `fs::write`, new files 0600.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_the_owner_reads_what_is_created() {
        let dir = std::env::temp_dir().join(format!("sluice-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        super::create_dir_all(&dir.join("a/b")).unwrap();
        super::write(&dir.join("a/b/f"), b"x").unwrap();
        drop(super::open_append(&dir.join("a/g")).unwrap());
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("a"), 0o700);
        assert_eq!(mode("a/b"), 0o700);
        assert_eq!(mode("a/b/f"), 0o600);
        assert_eq!(mode("a/g"), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
