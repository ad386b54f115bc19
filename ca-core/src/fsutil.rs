//! File writes that never leave a torn or over-permissive file behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the temporary files of this process, so two threads staging the same path never
/// write the same temporary file.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` through a temporary file in the same directory, fsyncs it, renames it
/// over `path` and fsyncs the directory: a reader sees the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    StagedFile::write(path, bytes, mode)?.commit()
}

/// A file written and synced under a temporary name beside its final path, not yet visible
/// there: [`StagedFile::commit`] renames it into place; dropping it uncommitted removes it.
/// Lets a caller make several files (or a file and a store write) appear together.
#[derive(Debug)]
pub(crate) struct StagedFile {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl StagedFile {
    /// Writes `bytes` to a temporary file beside `path` (mode `mode`) and syncs it.
    pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<StagedFile> {
        let (staged, mut f) = StagedFile::create(path, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(staged)
    }

    /// A temporary file beside `path` (mode `mode`), open for the caller to write in pieces
    /// and sync (`File::sync_all`) before committing it: for a file too large to hold whole.
    pub(crate) fn create(path: &Path, mode: u32) -> io::Result<(StagedFile, File)> {
        let dir = parent(path);
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{}",
            name.to_string_lossy(),
            std::process::id(),
            STAGED.fetch_add(1, Ordering::Relaxed)
        ));
        let staged = StagedFile {
            tmp,
            path: path.to_path_buf(),
            done: false,
        };
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&staged.tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        Ok((staged, f))
    }

    /// Renames the file into place and syncs the directory: a reader sees the old file or the
    /// new one, never a torn one.
    pub(crate) fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.done = true;
        File::open(parent(&self.path))?.sync_all()
    }

    /// Renames every file into place, then syncs each of their directories once (a
    /// publication of many files in one directory pays one directory sync, not one a file).
    /// On failure, the file that failed and why; the files before it are in place.
    pub(crate) fn commit_all(files: Vec<StagedFile>) -> Result<(), (PathBuf, io::Error)> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for mut f in files {
            fs::rename(&f.tmp, &f.path).map_err(|e| (f.path.clone(), e))?;
            f.done = true;
            let dir = parent(&f.path);
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
        for dir in dirs {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| (dir, e))?;
        }
        Ok(())
    }

    /// Where the file goes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Like [`StagedFile::commit`], for a file whose content must not be lost when it cannot
    /// be put in place (what a committed ceremony produced): the temporary file is then kept,
    /// and its path returned with the error.
    pub(crate) fn commit_or_keep(mut self) -> Result<(), (io::Error, Option<PathBuf>)> {
        if let Err(e) = fs::rename(&self.tmp, &self.path) {
            self.done = true;
            return Err((e, Some(self.tmp.clone())));
        }
        self.done = true;
        File::open(parent(&self.path))
            .and_then(|d| d.sync_all())
            .map_err(|e| (e, None))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Syncs a directory, so that a file created or removed in it stays so after a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` with mode 0600 and writes `bytes`; refuses to overwrite an existing file.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The bytes of `path`, refused without reading further when it is larger than `limit` (an
/// `InvalidData` error saying so): an input file the user names is never read into memory
/// whole before it is known to be small (`--csr /dev/zero`).
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {}", human_size(limit)),
        ));
    }
    Ok(bytes)
}

fn human_size(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

/// The longest line of an input file (a request item with a PEM CSR is about 1 KB).
pub const MAX_LINE: usize = 1024 * 1024;

/// The lines of an input file (a batch, a list of serials, a CSV), numbered from 1: each as
/// text, or why it is not a line we take (not UTF-8, longer than [`MAX_LINE`]), never holding
/// more than [`MAX_LINE`] bytes of one: one bad line is refused as that line, and a file of
/// one endless line costs no memory.
pub struct BoundedLines<R> {
    reader: R,
    n: usize,
}

impl<R: BufRead> BoundedLines<R> {
    /// The lines of `reader`.
    pub fn new(reader: R) -> BoundedLines<R> {
        BoundedLines { reader, n: 0 }
    }
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    type Item = io::Result<(usize, Result<String, String>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        match (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Err(e) => return Some(Err(e)),
            Ok(0) => return None,
            Ok(_) => {}
        }
        self.n += 1;
        if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            // Skip the rest of the line, a bounded piece at a time.
            loop {
                let mut rest = Vec::new();
                match (&mut self.reader)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut rest)
                {
                    Err(e) => return Some(Err(e)),
                    Ok(0) => break,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
            return Some(Ok((self.n, Err(format!("longer than {MAX_LINE} bytes")))));
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Some(Ok((
            self.n,
            String::from_utf8(buf).map_err(|e| {
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                )
            }),
        )))
    }
}
