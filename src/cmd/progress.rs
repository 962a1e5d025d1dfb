//! A progress bar of bytes read, on a terminal only: what `histor usage` and `histor audit
//! ingest` show while they read audit log files.

use std::io::IsTerminal;
use std::path::PathBuf;

/// A bar over the files' total size when standard error is a terminal.
pub fn bytes_bar(files: &[PathBuf]) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Moves the progress bar by the bytes read (compressed bytes for a gzip file).
pub struct CountingReader<R> {
    /// What is read.
    pub inner: R,
    /// The bar to move, if any.
    pub bar: Option<indicatif::ProgressBar>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}
