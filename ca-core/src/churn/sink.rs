//! Where trust-anchor updates go: one file per meter, or one NDJSON stream. Both make what they
//! wrote durable on `sync`, before the store records the meters' moves.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::model::Eui64;

/// Where updates go: one file per meter, or one NDJSON stream.
pub trait UpdateSink: Send {
    /// Writes one meter's update.
    fn put(&mut self, device: &Eui64, seq: u64, der: &[u8]) -> io::Result<()>;
    /// Makes everything put so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Withdraws an update that was written but not recorded (best effort).
    fn discard(&mut self, device: &Eui64);
    /// Where the updates are, for messages.
    fn location(&self) -> String;
}

/// `DIR/<DEVICE-ID>.tamp.der`, one file per meter (README.md#the-home), each written through a temporary
/// file and a rename; synced once per chunk (`syncfs`) rather than once per file. The folder is
/// created with the first update, so a refused command leaves nothing behind.
#[derive(Debug)]
pub struct DirSink {
    dir: PathBuf,
    dir_file: Option<File>,
}

impl DirSink {
    /// A sink writing into `dir`; refuses a path that exists and is not a folder.
    pub fn create(dir: &Path) -> io::Result<DirSink> {
        if dir.exists() && !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a folder",
            ));
        }
        Ok(DirSink {
            dir: dir.to_path_buf(),
            dir_file: None,
        })
    }

    /// The file of one meter's update.
    pub fn path_of(dir: &Path, device: &Eui64) -> PathBuf {
        dir.join(format!("{device}.tamp.der"))
    }
}

impl UpdateSink for DirSink {
    fn put(&mut self, device: &Eui64, _seq: u64, der: &[u8]) -> io::Result<()> {
        if self.dir_file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            self.dir_file = Some(File::open(&self.dir)?);
        }
        let path = DirSink::path_of(&self.dir, device);
        let tmp = self.dir.join(format!(".{device}.tamp.der.tmp"));
        std::fs::write(&tmp, der)?;
        std::fs::rename(&tmp, &path)
    }

    fn sync(&mut self) -> io::Result<()> {
        // One filesystem sync per chunk: every file and rename above is on disk after it.
        match &self.dir_file {
            Some(f) => rustix::fs::syncfs(f).map_err(io::Error::from),
            None => Ok(()),
        }
    }

    fn discard(&mut self, device: &Eui64) {
        let _ = std::fs::remove_file(DirSink::path_of(&self.dir, device));
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// One NDJSON line per update, `{"device_id", "seq", "update": <base64 DER>}`, appended (a re-run
/// after a crash adds to the stream; a meter keeps the update with the highest sequence number).
#[derive(Debug)]
pub struct NdjsonSink {
    path: PathBuf,
    file: io::BufWriter<File>,
}

impl NdjsonSink {
    /// Opens `path` for appending, creating it. A last line cut short by a crash (the process
    /// died while writing a chunk, before the chunk was synced and stored) is removed first, so
    /// that the next line does not fuse with it.
    pub fn open(path: &Path) -> io::Result<NdjsonSink> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = &file;
            let mut keep = 0u64;
            let mut pos = len;
            let mut buf = vec![0u8; 64 * 1024];
            // Find the last newline, reading backwards in blocks.
            'scan: while pos > 0 {
                let n = buf.len().min(pos as usize);
                pos -= n as u64;
                f.seek(SeekFrom::Start(pos))?;
                f.read_exact(&mut buf[..n])?;
                if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
                    keep = pos + i as u64 + 1;
                    break 'scan;
                }
            }
            if keep < len {
                file.set_len(keep)?;
                file.sync_data()?;
            }
        }
        Ok(NdjsonSink {
            path: path.to_path_buf(),
            file: io::BufWriter::new(file),
        })
    }
}

impl UpdateSink for NdjsonSink {
    fn put(&mut self, device: &Eui64, seq: u64, der: &[u8]) -> io::Result<()> {
        use base64::Engine as _;
        let line = serde_json::json!({
            "device_id": device.to_string(),
            "seq": seq,
            "update": base64::engine::general_purpose::STANDARD.encode(der),
        });
        serde_json::to_writer(&mut self.file, &line)?;
        self.file.write_all(b"\n")
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    fn discard(&mut self, _device: &Eui64) {
        // A line cannot be withdrawn from a stream; the summary reports the meter as failed.
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}
