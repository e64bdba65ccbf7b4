//! The volatile log: the daemon's tracing output in `<runtime-dir>/ttp.log`, rotated at
//! 1 MB to `ttp.log.1` (one old file kept), so a long-running daemon on a tmpfs never
//! fills memory. `ttp logs` follows it across rotations.
//!
//! Written by hand: a size-rotated file for one process is a few lines, and the crates
//! that do it (tracing-appender) rotate by time only.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

/// A log line as it may reach a terminal: the daemon that wrote it runs as the service
/// user, and a compromised one could write escape sequences for root's terminal (set its
/// title, write its clipboard, move the cursor to hide lines). Control characters (C0
/// but the tab, DEL, C1) and the Unicode controls that reorder or hide text (bidi
/// overrides and isolates, zero-width characters) are shown escaped (`\x1b`, `\u{202e}`);
/// everything else, text in any script included, is left as it is. The log itself has
/// none of these (it is written without colours), so a line of ttp's own never changes.
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    }
    if !line.chars().any(hidden) {
        return line.into();
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            c if hidden(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// Rotate once the file would grow past this.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The previous file's name: `ttp.log` -> `ttp.log.1`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// A log file that rotates itself. Clone the handle into tracing's writer.
#[derive(Clone)]
pub struct RotatingLog(Arc<Inner>);

struct Inner {
    path: PathBuf,
    max: u64,
    file: Mutex<(File, u64)>,
}

impl RotatingLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::with_limit(path, MAX_BYTES)
    }

    pub fn with_limit(path: &Path, max: u64) -> io::Result<Self> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(Self(Arc::new(Inner { path: path.to_owned(), max, file: Mutex::new((file, len)) })))
    }
}

/// Mode 0640: the log names destinations, which are nobody else's business. Opened as
/// root, so never through a link.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(path)
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        if g.1 > 0 && g.1 + buf.len() as u64 > self.0.max {
            if fs::rename(&self.0.path, rotated(&self.0.path)).is_ok() {
                *g = (open_append(&self.0.path)?, 0);
            } else {
                // A directory the daemon may not write (a --log-file elsewhere, once it is
                // no longer root): start the file over rather than grow without bound.
                g.0.set_len(0)?;
                g.1 = 0;
            }
        }
        let n = g.0.write(buf)?;
        g.1 += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.file.lock().unwrap_or_else(|p| p.into_inner()).0.flush()
    }
}

/// The last `n` lines of the log (the rotated file first, when needed).
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    for p in [rotated(path), path.to_owned()] {
        match fs::read(&p) {
            Ok(b) => lines.extend(String::from_utf8_lossy(&b).lines().map(str::to_owned)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Follows the log from its current end, across rotations, calling `line` for each new
/// line until it returns false.
pub fn follow(path: &Path, mut line: impl FnMut(&str) -> bool) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut ino = file.metadata()?.ino();
    file.seek(SeekFrom::End(0))?;
    let mut reader = io::BufReader::new(file);
    // A line written in two parts is read in two parts: hold it until its newline.
    let mut pending = String::new();
    loop {
        let n = reader.read_line(&mut pending)?;
        if pending.ends_with('\n') {
            if !line(pending.trim_end_matches('\n')) {
                return Ok(());
            }
            pending.clear();
            continue;
        }
        if n > 0 {
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated (a new file under the name) or gone (stopped): reopen from the start.
        match fs::metadata(path) {
            Ok(m) if m.ino() != ino => {
                // What the old file got just before the rename, then the new file.
                while reader.read_line(&mut pending)? > 0 {
                    if pending.ends_with('\n') {
                        if !line(pending.trim_end_matches('\n')) {
                            return Ok(());
                        }
                        pending.clear();
                    }
                }
                reader = io::BufReader::new(File::open(path)?);
                ino = m.ino();
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_the_log_never_reach_the_terminal() {
        let plain = "2026-12-07T00:00:01Z  INFO ttp::daemon: exit verified: Größe, 名前\tok";
        assert!(matches!(printable(plain), std::borrow::Cow::Borrowed(_)), "ttp's own lines pass unchanged");
        let evil = "INFO x: \u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2K\u{9b}31m\u{202e}gnp.exe\r";
        let shown = printable(evil);
        assert_eq!(shown, "INFO x: \\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2K\\x9b31m\\u{202e}gnp.exe\\x0d");
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn rotates_past_the_limit_and_tail_spans_both_files() {
        let dir = std::env::temp_dir().join(format!("ttp-logfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ttp.log");
        let mut log = RotatingLog::with_limit(&path, 100).unwrap();
        for i in 0..30 {
            writeln!(log, "line {i:02}").unwrap(); // 8 bytes each
        }
        let now = fs::metadata(&path).unwrap().len();
        let old = fs::metadata(rotated(&path)).unwrap().len();
        assert!(now <= 100 && old <= 100 && now > 0 && old > 0, "{now} {old}");
        assert_eq!(tail(&path, 3).unwrap(), ["line 27", "line 28", "line 29"]);
        // Lines are never split across the two files.
        let all = tail(&path, 1000).unwrap();
        assert!(all.iter().all(|l| l.len() == 7), "{all:?}");
        let first: usize = all[0][5..].parse().unwrap();
        assert_eq!(all.len(), 30 - first);
        fs::remove_dir_all(&dir).unwrap();
    }
}
